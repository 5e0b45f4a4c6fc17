"""Masking `COPY … TO STDOUT` data: text, CSV and binary formats, one CopyData at a time.

PostgreSQL sends each row of a COPY to the client in its own CopyData message (the binary
format adds a header before the first row and a trailer after the last). A `CopyMasker`
rewrites the planned fields of those rows with the same actions as a result plan: in text
and CSV the masked value is re-escaped/quoted; in binary a masked value of a non-text type
becomes NULL (there is no row description to change the type in).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from lockgate.masking.plan import DETECT, TEXT_LIKE, CellAction, MaskPlan

_I32: Final = struct.Struct("!i")
_I16: Final = struct.Struct("!h")
BINARY_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00"
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


@dataclass(slots=True)
class CopyMasker:
    """Rewrites CopyData payloads of one COPY TO STDOUT."""

    plan: MaskPlan
    fmt: str = "text"  # "text", "csv" or "binary"
    delimiter: str = "\t"
    null: str = "\\N"
    quote: str = '"'
    escape: str = '"'
    header_pending: bool = True
    # HEADER option: the first line names the columns; it carries no data.
    skip_header: bool = False
    counts: dict[str, int] = field(default_factory=dict)

    def rewrite(self, payload: bytes) -> bytes:
        if self.fmt == "binary":
            return self._binary(payload)
        if self.skip_header:
            self.skip_header = False
            return payload
        text = payload.decode("utf-8", "surrogateescape")
        ending = "\r\n" if text.endswith("\r\n") else ("\n" if text.endswith("\n") else "")
        body = text[: len(text) - len(ending)] if ending else text
        if self.fmt == "csv":
            fields = _csv_split(body, self.delimiter, self.quote, self.escape)
        else:
            fields = _text_split(body, self.delimiter)
        out: list[str] = []
        changed = False
        for i, (raw, value) in enumerate(fields):
            action = self.plan.actions[i] if i < len(self.plan.actions) else None
            if action is None or value is None:
                out.append(raw)
                continue
            new = self._value(action, value)
            if new is _KEEP:
                out.append(raw)
                continue
            changed = True
            out.append(self._encode(new))
        if not changed:
            return payload
        return (self.delimiter.join(out) + ending).encode("utf-8", "surrogateescape")

    def _value(self, action: CellAction, value: str) -> str | object | None:
        if action.kind == DETECT:
            masked, found = self.plan.policy.scrub(value)
            if not found:
                return _KEEP
            self.counts[action.rule] = self.counts.get(action.rule, 0) + found
            return masked
        self.counts[action.rule] = self.counts.get(action.rule, 0) + 1
        return action.strategy.apply(value)

    def _encode(self, value: object) -> str:
        if value is None:
            return "" if self.fmt == "csv" else self.null
        text = str(value)
        if self.fmt == "csv":
            q = self.quote
            return q + text.replace(q, self.escape + q) + q
        out = text.replace("\\", "\\\\")
        for ch, esc in (("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")):
            out = out.replace(ch, esc)
        if self.delimiter not in "\n\r\t\\":
            out = out.replace(self.delimiter, "\\" + self.delimiter)
        return out

    def _binary(self, payload: bytes) -> bytes:
        pos = 0
        prefix = b""
        if self.header_pending and payload.startswith(BINARY_SIGNATURE):
            self.header_pending = False
            (ext,) = _I32.unpack_from(payload, 15)
            pos = 19 + ext
            prefix = payload[:pos]
        if len(payload) - pos < 2:
            return payload
        (count,) = _I16.unpack_from(payload, pos)
        if count < 0:
            return payload  # the trailer
        parts = [prefix, payload[pos : pos + 2]]
        p = pos + 2
        changed = False
        for i in range(count):
            (n,) = _I32.unpack_from(payload, p)
            cell = payload[p + 4 : p + 4 + n] if n >= 0 else None
            action = self.plan.actions[i] if i < len(self.plan.actions) else None
            end = p + 4 + max(n, 0)
            if (
                action is None
                or cell is None
                or (action.kind == DETECT and action.type_oid not in TEXT_LIKE)
            ):
                parts.append(payload[p:end])
                p = end
                continue
            text_type = action.type_oid in TEXT_LIKE
            new = self._value(action, cell.decode("utf-8", "replace")) if text_type else None
            if not text_type and action.kind != DETECT:
                self.counts[action.rule] = self.counts.get(action.rule, 0) + 1
            if new is _KEEP:
                parts.append(payload[p:end])
            elif new is None:
                parts.append(b"\xff\xff\xff\xff")
                changed = True
            else:
                data = str(new).encode()
                parts.append(_I32.pack(len(data)) + data)
                changed = True
            p = end
        parts.append(payload[p:])
        return b"".join(parts) if changed else payload


_KEEP: Final = object()


def _text_split(line: str, delim: str) -> list[tuple[str, str | None]]:
    """Fields of a text-format COPY line: (raw text, value or None for NULL)."""
    raws: list[str] = []
    cur: list[str] = []
    i = 0
    n = len(line)
    while i < n:
        c = line[i]
        if c == "\\" and i + 1 < n:
            cur.append(line[i : i + 2])
            i += 2
            continue
        if c == delim:
            raws.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    raws.append("".join(cur))
    return [(r, None if r == "\\N" else _unescape(r)) for r in raws]


def _unescape(raw: str) -> str:
    if "\\" not in raw:
        return raw
    out: list[str] = []
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        if c != "\\" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = raw[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "x" and i + 2 < n and raw[i + 2] in "0123456789abcdefABCDEF":
            j = i + 2
            while j < n and j < i + 4 and raw[j] in "0123456789abcdefABCDEF":
                j += 1
            out.append(chr(int(raw[i + 2 : j], 16)))
            i = j
        elif nxt in "01234567":
            j = i + 1
            while j < n and j < i + 4 and raw[j] in "01234567":
                j += 1
            out.append(chr(int(raw[i + 1 : j], 8)))
            i = j
        else:
            out.append(nxt)
            i += 2
    return "".join(out)


def _csv_split(line: str, delim: str, quote: str, escape: str) -> list[tuple[str, str | None]]:
    """Fields of a CSV COPY row: (raw text, value, or None for an unquoted empty field)."""
    out: list[tuple[str, str | None]] = []
    i = 0
    n = len(line)
    while True:
        start = i
        if i < n and line[i] == quote:
            i += 1
            value: list[str] = []
            while i < n:
                c = line[i]
                if c == escape and i + 1 < n and line[i + 1] in (quote, escape):
                    value.append(line[i + 1])
                    i += 2
                    continue
                if c == quote:
                    i += 1
                    break
                value.append(c)
                i += 1
            while i < n and line[i] != delim:
                value.append(line[i])
                i += 1
            out.append((line[start:i], "".join(value)))
        else:
            while i < n and line[i] != delim:
                i += 1
            raw = line[start:i]
            out.append((raw, None if raw == "" else raw))
        if i >= n:
            break
        i += 1  # the delimiter
    return out
