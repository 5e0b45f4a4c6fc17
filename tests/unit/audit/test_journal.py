"""Journal framing and files: round trip, torn and corrupt tails, byte-by-byte reading."""

from __future__ import annotations

import fcntl
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from lockgate.audit import journal

RECORDS: list[list[Any]] = [
    [
        "S",
        "s-1",
        "alice",
        ["dba", "eng"],
        "human",
        "https://idp",
        None,
        "shop",
        "pg",
        "h:1",
        "",
        "",
        1.5,
    ],
    ["C", "s-1", 1, 1714564800.25, "SELECT 'é' -- ünïcode ✓", "select", ["t"], ["42", None]],
    ["F", 1714564801.0, 3, "SELECT 3", None, None, 512, 1.5, "s-1", 1],
    ["C", "s-1", 2, 1714564802.0, "x" * 70_000, "", [], None],
    [],
]


def test_round_trip() -> None:
    data = journal.encode(RECORDS)
    records, end = journal.decode(data)
    assert records == RECORDS
    assert end == len(data)


def test_decode_from_an_offset_and_with_nothing() -> None:
    first = journal.encode(RECORDS[:1])
    data = first + journal.encode(RECORDS[1:])
    records, end = journal.decode(data, len(first))
    assert records == RECORDS[1:] and end == len(data)
    assert journal.decode(b"") == ([], 0)
    assert journal.decode(data, len(data)) == ([], len(data))


def test_encode_frames_each_record_separately() -> None:
    data = journal.encode(RECORDS)
    assert data == b"".join(journal.encode([r]) for r in RECORDS)
    assert journal.frame_size(data) == len(journal.encode(RECORDS[:1]))
    assert journal.frame_size(data[:7]) == 0


@pytest.mark.parametrize("cut", [1, 4, 7, 8, 9, 20])
def test_torn_tail_ends_at_the_last_whole_record(cut: int) -> None:
    good = journal.encode(RECORDS[:3])
    torn = journal.encode(RECORDS[3:4])[:cut]
    records, end = journal.decode(good + torn)
    assert records == RECORDS[:3]
    assert end == len(good)


@pytest.mark.parametrize("where", ["payload", "crc", "length"])
def test_corrupt_record_ends_the_readable_part(where: str) -> None:
    first = journal.encode(RECORDS[:1])
    second = bytearray(journal.encode(RECORDS[1:2]))
    third = journal.encode(RECORDS[2:3])
    if where == "payload":
        second[12] ^= 0x01
    elif where == "crc":
        second[4] ^= 0x80
    else:  # a shorter length: the CRC of the shorter payload does not match
        (length,) = struct.unpack_from("!I", second)
        struct.pack_into("!I", second, 0, length - 1)
    records, end = journal.decode(first + bytes(second) + third)
    assert records == RECORDS[:1]  # nothing after the damage is trusted, even a good record
    assert end == len(first)


def test_fed_byte_by_byte() -> None:
    """As an ingester polling a file being written: each prefix yields only whole records."""
    data = journal.encode(RECORDS)
    bounds = []
    pos = 0
    for rec in RECORDS:
        pos += len(journal.encode([rec]))
        bounds.append(pos)
    got: list[list[Any]] = []
    pos = 0
    for n in range(len(data) + 1):
        records, pos = journal.decode(data[:n], pos)
        got += records
        assert pos == max([b for b in bounds if b <= n], default=0)
    assert got == RECORDS


def test_decode_with_trailing_zeroes_stops_cleanly() -> None:
    """A file extended with zeroes (a crash after the size grew, before the data) reads fine."""
    data = journal.encode(RECORDS[:2])
    records, end = journal.decode(data + bytes(64))
    assert records == RECORDS[:2] and end == len(data)


def test_writer_appends_and_holds_its_lock(tmp_path: Path) -> None:
    w = journal.JournalWriter(tmp_path / "j")
    try:
        assert w.path.parent == tmp_path / "j" and w.path.suffix == journal.SUFFIX
        assert not list((tmp_path / "j").glob("*.new"))
        w.append(journal.encode(RECORDS[:2]))
        w.append(journal.encode(RECORDS[2:]))
        assert w.size == w.path.stat().st_size
        assert journal.decode(w.path.read_bytes())[0] == RECORDS
        fd = os.open(w.path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        assert list(journal.orphaned(tmp_path / "j", None)) == []
    finally:
        w.close()
    (found,) = list(journal.orphaned(tmp_path / "j", None))
    os.close(found[1])
    assert found[0] == w.path


def test_failed_append_marks_the_writer_broken(tmp_path: Path) -> None:
    w = journal.JournalWriter(tmp_path)
    w.append(journal.encode(RECORDS[:1]))
    os.close(w._fd)  # the descriptor is gone underneath: EBADF
    with pytest.raises(OSError):
        w.append(journal.encode(RECORDS[1:2]))
    assert w.broken
    with pytest.raises(OSError):  # never appends after a failure, even if writing would work
        w.append(journal.encode(RECORDS[1:2]))
    w.close()  # does not close a descriptor number that is no longer its own
    assert journal.decode(w.path.read_bytes())[0] == RECORDS[:1]


def test_a_checksummed_payload_that_is_not_json_ends_the_readable_part() -> None:
    good = journal.encode(RECORDS[:1])
    junk = b"{not json"
    framed = struct.pack("!II", len(junk), zlib.crc32(junk)) + junk
    assert journal.decode(good + framed + good) == (RECORDS[:1], len(good))
