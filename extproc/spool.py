"""A spool on local disk: log batches kept while the log store is away, read back oldest first.

A spool is a directory of append-only segments, `<sequence>.seg`, numbered in the order they
were begun. A process appends only to a segment it began itself (never to one found on disk, whose
tail may be torn), and begins a new one past `segment_bytes`. A segment is read whole and removed
whole: the reader removes it once every batch in it is stored.

Each record is `length | rows | crc32 | payload`: three little-endian u32 (the payload's size,
the rows it holds, the CRC-32 of rows and payload) and the payload, a serialised `LogBatch`. A
crash can leave the last record of a segment short, or bytes that are not a record; reading stops
there, keeps every record before it, and counts the bytes it skipped. The spool is bounded on
disk: past `max_bytes` the oldest segments are removed and their rows counted as dropped.

Methods do blocking file I/O: a caller on an event loop runs them in a worker thread, one call
at a time. One process owns a spool directory (an exclusive lock, released by the kernel however
the process ends), so two data planes never replay the same rows.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

log = logging.getLogger("gatez.spool")

HEADER: Final = struct.Struct("<III")
SUFFIX: Final = ".seg"
# A length above this is not a batch we wrote (batches are a few MiB at most): the bytes are not
# a record, and reading the segment stops there.
MAX_RECORD_BYTES: Final = 64 * 1024 * 1024
DEFAULT_SEGMENT_BYTES: Final = 4 * 1024 * 1024


class SpoolLocked(RuntimeError):
    """Another process owns this spool directory."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment file; `sequence` orders segments by the time they were begun."""

    path: Path
    sequence: int


@dataclass(frozen=True, slots=True)
class SegmentContents:
    """The records of a segment, in the order they were written."""

    records: list[bytes]
    rows: int
    # Bytes past the last whole record (a torn tail, or damage): skipped, not fatal.
    skipped_bytes: int


class Spool:
    """Append-only segments of length-prefixed, checksummed records, bounded on disk."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("a spool needs max_bytes > 0")
        self.directory = directory
        self.max_bytes = max_bytes
        # At least four segments fit under the bound, so dropping the oldest frees a fraction.
        self._segment_bytes = max(1, min(segment_bytes, max_bytes // 4))
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_file = _lock(directory)
        self._mutex = threading.Lock()
        found = sorted(_segments_in(directory), key=lambda s: s.sequence)
        # Segments no longer appended to, oldest first, with their sizes.
        self._closed: dict[Segment, int] = {s: s.path.stat().st_size for s in found}
        self._next_sequence = found[-1].sequence + 1 if found else 1
        self._active: Segment | None = None
        self._active_fd = -1
        self._active_size = 0
        self.rows_dropped = 0
        self.bytes_skipped = 0

    @property
    def size_bytes(self) -> int:
        """Bytes on disk in all segments."""
        return sum(self._closed.values()) + self._active_size

    def __bool__(self) -> bool:
        """True while the spool holds any record."""
        return bool(self._closed) or self._active_size > 0

    def append(self, records: Iterable[tuple[bytes, int]]) -> int:
        """Appends `(payload, rows)` records, makes them durable (fsync), and keeps the spool
        within `max_bytes`. Returns the rows dropped (oldest segments) to stay there."""
        with self._mutex:
            for payload, rows in records:
                if self._active is None:
                    self._begin()
                header = HEADER.pack(
                    len(payload), rows, zlib.crc32(payload, zlib.crc32(_u32(rows)))
                )
                _write_all(self._active_fd, header + payload)
                self._active_size += HEADER.size + len(payload)
                if self._active_size >= self._segment_bytes:
                    self._seal()
            if self._active is not None:
                os.fsync(self._active_fd)
            return self._enforce_bound()

    def oldest(self) -> Segment | None:
        """The oldest segment, sealed (nothing is appended to it any more), or None if empty."""
        with self._mutex:
            if not self._closed and self._active_size > 0:
                self._seal()
            return next(iter(self._closed), None)

    def read(self, segment: Segment) -> SegmentContents:
        """Every whole record of a sealed segment; a torn or damaged tail is skipped, counted."""
        data = segment.path.read_bytes()
        contents = parse_segment(data)
        if contents.skipped_bytes:
            self.bytes_skipped += contents.skipped_bytes
            log.warning(
                "spool segment %s: %d bytes after the last whole record skipped",
                segment.path.name,
                contents.skipped_bytes,
            )
        return contents

    def remove(self, segment: Segment) -> None:
        """Deletes a segment whose rows are stored."""
        with self._mutex:
            self._closed.pop(segment, None)
            segment.path.unlink(missing_ok=True)
            _fsync_directory(self.directory)

    def set_aside(self, segment: Segment) -> None:
        """Renames a segment that cannot be read to `<name>.unreadable` and forgets it."""
        with self._mutex:
            self._closed.pop(segment, None)
            segment.path.replace(segment.path.with_suffix(".unreadable"))

    def close(self) -> None:
        """Seals the segment being written and releases the directory."""
        with self._mutex:
            if self._active is not None:
                self._seal()
            self._lock_file.close()

    def _begin(self) -> None:
        segment = Segment(
            self.directory / f"{self._next_sequence:016d}{SUFFIX}", self._next_sequence
        )
        self._next_sequence += 1
        self._active_fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._active = segment
        self._active_size = 0
        _fsync_directory(self.directory)

    def _seal(self) -> None:
        assert self._active is not None
        os.fsync(self._active_fd)
        os.close(self._active_fd)
        self._closed[self._active] = self._active_size
        self._active, self._active_fd, self._active_size = None, -1, 0

    def _enforce_bound(self) -> int:
        dropped = 0
        while self._closed and self.size_bytes > self.max_bytes:
            segment = next(iter(self._closed))
            rows = _rows_in(segment.path)
            del self._closed[segment]
            segment.path.unlink(missing_ok=True)
            dropped += rows
            log.warning(
                "spool over %d bytes: oldest segment %s dropped (%d rows)",
                self.max_bytes,
                segment.path.name,
                rows,
            )
        if dropped:
            _fsync_directory(self.directory)
        self.rows_dropped += dropped
        return dropped


def parse_segment(data: bytes) -> SegmentContents:
    """The whole records at the start of `data`, stopping at the first one that is not."""
    records: list[bytes] = []
    rows = 0
    offset = 0
    view = memoryview(data)
    while len(data) - offset >= HEADER.size:
        length, record_rows, crc = HEADER.unpack_from(data, offset)
        start = offset + HEADER.size
        end = start + length
        if length > MAX_RECORD_BYTES or end > len(data):
            break
        payload = bytes(view[start:end])
        if zlib.crc32(payload, zlib.crc32(_u32(record_rows))) != crc:
            break
        records.append(payload)
        rows += record_rows
        offset = end
    return SegmentContents(records, rows, len(data) - offset)


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "little")


def _rows_in(path: Path) -> int:
    """The rows a segment's headers claim (for counting what a drop loses; payloads unread)."""
    rows = 0
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            offset = 0
            while size - offset >= HEADER.size:
                length, record_rows, _ = HEADER.unpack(file.read(HEADER.size))
                offset += HEADER.size + length
                if length > MAX_RECORD_BYTES or offset > size:
                    break
                rows += record_rows
                file.seek(offset)
    except FileNotFoundError:
        return 0
    return rows


def _segments_in(directory: Path) -> list[Segment]:
    segments = []
    for path in directory.glob(f"*{SUFFIX}"):
        stem = path.name.removesuffix(SUFFIX)
        if stem.isdigit():
            segments.append(Segment(path, int(stem)))
    return segments


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    """Makes a file's creation or removal durable, not only its contents."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(directory: Path) -> IO[str]:
    file = (directory / ".lock").open("a")
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        raise SpoolLocked(f"{directory} is in use by another process") from None
    return file
