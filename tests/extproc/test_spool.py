"""Spool: append-only segments of checksummed records on a real disk — read back oldest first,
whole records only after a torn write (one made by a process killed mid-write too), bounded,
owned by one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from extproc.spool import HEADER, SUFFIX, Spool, SpoolLocked, parse_segment


def record(n: int, size: int = 100) -> tuple[bytes, int]:
    """A payload that names its number, `size` bytes long, holding `n % 7 + 1` rows."""
    label = f"record-{n:06d}:".encode()
    return label + b"x" * (size - len(label)), n % 7 + 1


def numbers(payloads: list[bytes]) -> list[int]:
    return [int(p.split(b":")[0].removeprefix(b"record-")) for p in payloads]


def drain(spool: Spool) -> list[bytes]:
    """Reads and removes every segment, oldest first, as a replay would."""
    payloads = []
    while (segment := spool.oldest()) is not None:
        payloads += spool.read(segment).records
        spool.remove(segment)
    return payloads


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SUFFIX}"))


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    spool.append(record(n) for n in range(10))
    spool.append(record(n) for n in range(10, 25))
    assert len(segment_files(tmp_path)) == 3  # 9 records of 112 bytes fill 1000
    assert numbers(drain(spool)) == list(range(25))
    assert not spool and segment_files(tmp_path) == []
    spool.close()


def test_a_segment_reports_its_rows(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([record(n) for n in range(5)])
    segment = spool.oldest()
    assert segment is not None
    contents = spool.read(segment)
    assert contents.rows == sum(n % 7 + 1 for n in range(5))
    assert contents.skipped_bytes == 0
    spool.close()


def test_oldest_seals_the_segment_being_written(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([record(0)])
    first = spool.oldest()
    spool.append([record(1)])
    # The record written after sealing went to a new segment; the sealed one is unchanged.
    assert first is not None and numbers(spool.read(first).records) == [0]
    spool.remove(first)
    assert numbers(drain(spool)) == [1]
    spool.close()


def test_an_empty_spool_has_no_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.oldest() is None and not spool
    spool.append([])
    assert spool.oldest() is None and segment_files(tmp_path) == []
    spool.close()


def test_a_reopened_spool_keeps_its_segments_and_appends_to_a_new_one(tmp_path: Path) -> None:
    first = Spool(tmp_path, max_bytes=1 << 20)
    first.append([record(0), record(1)])
    first.close()
    [old] = segment_files(tmp_path)
    old_bytes = old.read_bytes()
    second = Spool(tmp_path, max_bytes=1 << 20)
    second.append([record(2)])
    # A segment found on disk may end in a torn record: nothing is ever appended to it.
    assert len(segment_files(tmp_path)) == 2 and old.read_bytes() == old_bytes
    assert numbers(drain(second)) == [0, 1, 2]
    second.close()


@pytest.mark.parametrize(
    ("damage", "kept"),
    [
        # Cut inside the last record's payload, inside its header, right after a header.
        (lambda data: data[:-10], 4),
        (lambda data: data[: -(100 + HEADER.size) + 5], 4),
        (lambda data: data[:-100], 4),
        # Zeros a crash can leave at the end of a file, and plain garbage.
        (lambda data: data + b"\0" * 64, 5),
        (lambda data: data + b"\xff" * 7, 5),
        # A flipped bit in the third record: it and everything after are skipped.
        (lambda data: flip(data, 2 * (100 + HEADER.size) + HEADER.size + 50), 2),
        # A length that points far past the end.
        (lambda data: data + HEADER.pack(1 << 30, 1, 0) + b"abc", 5),
    ],
)
def test_a_damaged_tail_is_skipped_and_the_records_before_it_kept(
    tmp_path: Path, damage: Callable[[bytes], bytes], kept: int
) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([record(n) for n in range(5)])
    spool.close()
    [path] = segment_files(tmp_path)
    path.write_bytes(damage(path.read_bytes()))

    spool = Spool(tmp_path, max_bytes=1 << 20)
    segment = spool.oldest()
    assert segment is not None
    contents = spool.read(segment)
    assert numbers(contents.records) == list(range(kept))
    assert contents.skipped_bytes == len(path.read_bytes()) - kept * (100 + HEADER.size)
    assert spool.bytes_skipped == contents.skipped_bytes
    spool.close()


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_parse_segment_of_nothing_is_no_record() -> None:
    assert parse_segment(b"").records == [] and parse_segment(b"").skipped_bytes == 0


def test_over_its_bound_the_spool_drops_the_oldest_segments_and_counts_their_rows(
    tmp_path: Path,
) -> None:
    # Each record is 100 + 12 bytes; segments hold 3 records; at most 1000 bytes.
    spool = Spool(tmp_path, max_bytes=1000, segment_bytes=250)
    dropped = spool.append(record(n) for n in range(20))
    assert spool.size_bytes <= 1000
    survivors = numbers(drain(spool))
    # The newest records survive, in order, and every dropped row was counted.
    assert survivors == list(range(20 - len(survivors), 20))
    assert dropped == sum(n % 7 + 1 for n in range(20 - len(survivors)))
    assert spool.rows_dropped == dropped > 0
    spool.close()


def test_the_bound_holds_across_appends(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=2000, segment_bytes=500)
    for n in range(100):
        spool.append([record(n)])
        assert spool.size_bytes <= 2000 + 500
    assert sum(p.stat().st_size for p in segment_files(tmp_path)) == spool.size_bytes
    spool.close()


def test_one_process_owns_a_spool_directory(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    with pytest.raises(SpoolLocked):
        Spool(tmp_path, max_bytes=1 << 20)
    spool.close()
    Spool(tmp_path, max_bytes=1 << 20).close()


def test_a_segment_that_cannot_be_read_is_set_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([record(0)])
    segment = spool.oldest()
    assert segment is not None
    spool.set_aside(segment)
    assert spool.oldest() is None
    assert (tmp_path / segment.path.with_suffix(".unreadable").name).exists()
    spool.close()


def test_segments_are_private_to_the_data_plane(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    spool.append([record(0)])
    [path] = segment_files(tmp_path / "spool")
    assert path.stat().st_mode & 0o077 == 0
    assert (tmp_path / "spool").stat().st_mode & 0o077 == 0
    spool.close()


WRITER = """
import sys
from pathlib import Path
from extproc.spool import Spool

spool = Spool(Path(sys.argv[1]), max_bytes=1 << 30, segment_bytes=64 * 1024)
n = 0
while True:
    label = f"record-{n:06d}:".encode()
    # Large records, so a kill often lands in the middle of one.
    spool.append([(label + b"x" * (20_000 + n % 5000), 1)])
    n += 1
    if n == 50:
        print("started", flush=True)
"""


def test_a_process_killed_mid_write_leaves_only_whole_records(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == b"started\n"
        time.sleep(0.2)
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    spool = Spool(directory, max_bytes=1 << 30)
    payloads = drain(spool)
    # Every record read back is whole, and none is missing before the last one read.
    assert len(payloads) >= 50
    assert numbers(payloads) == list(range(len(payloads)))
    assert all(
        len(p) == 20_000 + n % 5000 + len(f"record-{n:06d}:") for n, p in enumerate(payloads)
    )
    spool.close()
