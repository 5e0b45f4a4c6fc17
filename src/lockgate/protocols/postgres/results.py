"""Decoding captured result messages (`RowDescription`, `DataRow`, `CommandComplete`) for replay.

The relay keeps what a client received as wire bytes and never decodes rows on its hot path;
this reads them back, on demand, into result sets of text cells. Text-format values are
shown as the client saw them; binary-format values (asyncpg, JDBC binary transfer) as hex.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

_I32: Final = struct.Struct("!i")
_I16: Final = struct.Struct("!h")
# A RowDescription field after its name: table oid, column number, type oid, type size,
# type modifier, format code.
_FIELD: Final = struct.Struct("!ihihih")


@dataclass(slots=True)
class ResultSet:
    """One result set: column names, rows of cells (None for NULL) and its command tag."""

    columns: list[str] = field(default_factory=list)
    rows: list[list[str | None]] = field(default_factory=list)
    tag: str = ""


def decode(data: bytes) -> list[ResultSet]:
    """Result sets in captured messages; a truncated or malformed tail is ignored."""
    sets: list[ResultSet] = []
    current: ResultSet | None = None
    formats: list[int] = []
    pos, n = 0, len(data)
    while pos + 5 <= n:
        t = data[pos]
        (length,) = _I32.unpack_from(data, pos + 1)
        end = pos + 1 + length
        if length < 4 or end > n:
            break
        body = data[pos + 5 : end]
        pos = end
        try:
            if t == 0x54:  # 'T'
                current = ResultSet()
                sets.append(current)
                current.columns, formats = _row_description(body)
            elif t == 0x44:  # 'D'
                if current is None or current.tag:
                    current = ResultSet()
                    sets.append(current)
                    formats = []
                current.rows.append(_data_row(body, formats))
            elif t == 0x43:  # 'C'
                if current is None or current.tag:
                    current = ResultSet()
                    sets.append(current)
                current.tag = body.split(b"\x00", 1)[0].decode("utf-8", "replace")
                current = None
        except (struct.error, IndexError, ValueError):
            break
    for s in sets:
        width = max([len(s.columns), *(len(r) for r in s.rows)])
        s.columns += [f"column{i + 1}" for i in range(len(s.columns), width)]
    return sets


def _row_description(body: bytes) -> tuple[list[str], list[int]]:
    (count,) = _I16.unpack_from(body, 0)
    pos = 2
    names: list[str] = []
    formats: list[int] = []
    for _ in range(count):
        stop = body.index(b"\x00", pos)
        names.append(body[pos:stop].decode("utf-8", "replace"))
        formats.append(_FIELD.unpack_from(body, stop + 1)[5])
        pos = stop + 1 + _FIELD.size
    return names, formats


def _data_row(body: bytes, formats: list[int]) -> list[str | None]:
    (count,) = _I16.unpack_from(body, 0)
    pos = 2
    cells: list[str | None] = []
    for i in range(count):
        (size,) = _I32.unpack_from(body, pos)
        pos += 4
        if size < 0:
            cells.append(None)
            continue
        value = body[pos : pos + size]
        if len(value) != size:
            raise ValueError("truncated DataRow")
        pos += size
        binary = i < len(formats) and formats[i] == 1
        cells.append("\\x" + value.hex() if binary else value.decode("utf-8", "replace"))
    return cells
