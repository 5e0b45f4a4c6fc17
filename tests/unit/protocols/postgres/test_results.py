"""Decoding captured result messages back into result sets."""

from __future__ import annotations

import struct

from lockgate.protocols.postgres import messages as m
from lockgate.protocols.postgres.results import decode


def row_description(*columns: tuple[str, int]) -> bytes:
    body = struct.pack("!h", len(columns))
    for name, fmt in columns:
        body += name.encode() + b"\x00" + struct.pack("!ihihih", 0, 0, 25, -1, -1, fmt)
    return m.message(b"T", body)


def data_row(*cells: bytes | None) -> bytes:
    body = struct.pack("!h", len(cells))
    for c in cells:
        body += struct.pack("!i", -1) if c is None else struct.pack("!i", len(c)) + c
    return m.message(b"D", body)


def complete(tag: str) -> bytes:
    return m.message(b"C", tag.encode() + b"\x00")


def test_sets_with_names_nulls_binary_and_tags() -> None:
    data = (
        row_description(("id", 0), ("blob", 1))
        + data_row(b"1", b"\x00\xff")
        + data_row(None, b"")
        + complete("SELECT 2")
        + row_description(("x", 0))
        + complete("SELECT 0")
    )
    first, second = decode(data)
    assert first.columns == ["id", "blob"]
    assert first.rows == [["1", "\\x00ff"], [None, "\\x"]]
    assert first.tag == "SELECT 2"
    assert (second.columns, second.rows, second.tag) == (["x"], [], "SELECT 0")


def test_rows_without_description_get_numbered_columns() -> None:
    (rs,) = decode(data_row(b"a", b"b") + complete("FETCH 1"))
    assert rs.columns == ["column1", "column2"]
    assert rs.rows == [["a", "b"]]


def test_truncated_tail_is_ignored() -> None:
    data = row_description(("v", 0)) + data_row(b"kept") + data_row(b"cut")[:-2]
    (rs,) = decode(data)
    assert rs.rows == [["kept"]]
    assert decode(b"") == []
