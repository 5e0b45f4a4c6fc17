"""MaskPlan: which cells of a result get masked, and the byte-level rewriting of rows.

Theory of operation
-------------------
A plan is built once per result from its columns (`ResultColumn`: what a PostgreSQL
RowDescription says — table OID, column number, type, format — plus the lineage the
caller resolved) and the session's `MaskPolicy`. Each column gets one action:

- `MASK`: the column is a masked table column (even renamed, through `*`, a view or a
  join): its strategy applies to each value;
- `WHOLE`: the column is computed from masked columns (`upper(email)`, `row_to_json(c)`)
  or from something lineage cannot see into: the whole value is masked;
- `DETECT`: a text-like column no rule covers: content detectors mask what they find.

A plan with no action is `None` and rows pass untouched. Rewriting walks a run of DataRow
messages, reads field lengths up to the last planned column only, decodes only planned
cells and copies everything else as slices. Masked values are UTF-8 text (valid for the
`text` type in text and binary formats alike), or NULL (valid for every type); when a
column's type would not parse the masked text, its RowDescription entry becomes `text`.
"""

from __future__ import annotations

import bisect
import re
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from lockgate.masking import detectors as det
from lockgate.masking import rowkernel as rk
from lockgate.masking.policy import MaskPolicy
from lockgate.masking.strategies import Strategy

TEXT_OID: Final = 25
JSONB_OID: Final = 3802
# Types whose text and binary forms are both the UTF-8 text (jsonb: one version byte more).
TEXT_LIKE: Final = frozenset({25, 1043, 1042, 19, 705, 114, 142, JSONB_OID})

_FIELD: Final = struct.Struct("!IhIhih")
_I32: Final = struct.Struct("!i")

MASK, WHOLE, DETECT = 1, 2, 3


@dataclass(frozen=True, slots=True)
class ResultColumn:
    """One column of a RowDescription."""

    name: bytes
    table_oid: int
    attnum: int
    type_oid: int
    typlen: int
    typmod: int
    fmt: int


def parse_row_description(payload: bytes | memoryview) -> list[ResultColumn]:
    data = bytes(payload)
    (count,) = struct.unpack_from("!h", data, 0)
    pos = 2
    cols: list[ResultColumn] = []
    for _ in range(count):
        end = data.index(b"\x00", pos)
        name = data[pos:end]
        table, attnum, typ, typlen, typmod, fmt = _FIELD.unpack_from(data, end + 1)
        cols.append(ResultColumn(name, table, attnum, typ, typlen, typmod, fmt))
        pos = end + 1 + _FIELD.size
    return cols


def row_description(cols: Sequence[ResultColumn]) -> bytes:
    """A whole RowDescription message ('T') for `cols`."""
    body = bytearray(struct.pack("!h", len(cols)))
    for c in cols:
        body += c.name + b"\x00"
        body += _FIELD.pack(c.table_oid, c.attnum, c.type_oid, c.typlen, c.typmod, c.fmt)
    return b"T" + _I32.pack(len(body) + 4) + bytes(body)


@dataclass(slots=True)
class CellAction:
    kind: int
    rule: str
    strategy: Strategy
    type_oid: int
    fmt: int


@dataclass(slots=True)
class MaskPlan:
    """Per-column actions for one result; counts masked cells per rule."""

    actions: list[CellAction | None]
    policy: MaskPolicy
    counts: dict[str, int] = field(default_factory=dict)
    last: int = -1
    text_like: frozenset[int] = TEXT_LIKE
    # None: `rowkernel.KERNEL` (the compiled kernel when it is built).
    kernel: rk.Kernel | None = None
    joiner: rk.Joiner | None = None
    _ops: tuple[rk.CellOp, ...] | None = None
    _rules: dict[int, str] = field(default_factory=dict)
    _scans: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.last = max((i for i, a in enumerate(self.actions) if a is not None), default=-1)

    def with_formats(self, formats: Sequence[int]) -> MaskPlan:
        """The plan for rows whose formats the Bind chose (statement plans say text)."""
        if not formats:
            return self
        acts: list[CellAction | None] = []
        for i, a in enumerate(self.actions):
            fmt = formats[0] if len(formats) == 1 else (formats[i] if i < len(formats) else 0)
            acts.append(None if a is None else replace(a, fmt=fmt))
        return MaskPlan(
            acts, self.policy, text_like=self.text_like, kernel=self.kernel, joiner=self.joiner
        )

    def rewrite_rows(self, buf: bytes | bytearray | memoryview, start: int, stop: int) -> bytes:
        """DataRow messages in `buf[start:stop]`, planned cells masked."""
        if self._ops is None:
            self._ops = self._cell_ops()
        ops = self._ops
        counts = self.counts
        if self._scans:
            # Content detection: one scan of the whole run per column, cells decoded only
            # where a detector's pattern hit.
            chunk = list(ops)
            for k in self._scans:
                op = chunk[k]
                scanned = self._scan(buf, start, stop, op[0], op[6])
                if scanned is None:
                    chunk[k] = (op[0], rk.CALL, *op[2:7], None)  # cell by cell after all
                    continue
                table, found = scanned
                chunk[k] = (*op[:7], table)
                if found:
                    rule = self._rules[op[0]]
                    counts[rule] = counts.get(rule, 0) + found
            ops = tuple(chunk)
        rows, masked = (self.kernel or rk.KERNEL)(buf, start, stop, ops)
        for op, n in zip(ops, masked, strict=True):
            if n:
                rule = self._rules[op[0]]
                counts[rule] = counts.get(rule, 0) + n
        return rows

    def _scan(
        self,
        buf: bytes | bytearray | memoryview,
        start: int,
        stop: int,
        index: int,
        call: rk.CellCall,
    ) -> tuple[list[bytes | None], int] | None:
        """(new cell or None per row, findings) for the detection column `index`.

        The values are joined with NUL (PostgreSQL text never holds one, and no built-in
        pattern matches it or differs next to it from a string's edge), each detector's
        pattern runs once over the whole text, and only the cells a match touches are
        scanned for real (checksums included) by `call`. None when a value held a NUL
        after all: then every cell goes to `call`.
        """
        blob, rows = (self.joiner or rk.JOINED)(buf, start, stop, index)
        cells = blob.split(b"\0")
        if len(cells) != rows:
            return None
        text = blob.decode("utf-8", "replace")
        touched: set[int] = set()
        seps: list[int] | None = None
        for d in self.policy.detectors:
            if d.needs and not any(c in text for c in d.needs):
                continue
            for mt in d.pattern.finditer(text):
                if seps is None:
                    seps = [m.start() for m in _NUL.finditer(text)]
                first = bisect.bisect_right(seps, mt.start())
                last = bisect.bisect_right(seps, max(mt.end() - 1, mt.start()))
                touched.update(range(first, last + 1))
        table: list[bytes | None] = [None] * rows
        found = 0
        for k in touched:
            table[k], n = call(cells[k])
            found += n
        return table, found

    def _cell_ops(self) -> tuple[rk.CellOp, ...]:
        """The kernel's op per planned column (strategy chosen once, not per cell)."""
        ops: list[rk.CellOp] = []
        # Run-wide scans stand in for per-cell calls when only built-in detectors run
        # (a custom pattern may anchor on the start or end of a value).
        scan = all(det.BUILTIN.get(d.name) is d for d in self.policy.detectors)
        for i, a in enumerate(self.actions):
            if a is None:
                continue
            self._rules[i] = a.rule
            call = _cached(self._cell, a)
            s = a.strategy
            op, cell = rk.CALL, b""
            if a.kind == DETECT and scan:
                op = rk.TABLE
                self._scans.append(len(ops))
            elif a.kind != DETECT:
                textual = (a.fmt == 0 or a.type_oid in TEXT_LIKE) and not (
                    a.fmt == 1 and a.type_oid == JSONB_OID
                )
                if s.name == "redact":
                    op, cell = rk.REDACT, _encode(s.text)
                elif s.name == "null":
                    op = rk.NULL
                elif textual:
                    op = rk.PARTIAL if s.name == "partial" else rk.HASH
            keep, chars = s.keep_last, min(max(s.hash_chars, 0), 64)
            ops.append((i, op, cell, keep, s.key, chars, call, [] if op == rk.TABLE else None))
        return tuple(ops)

    def _cell(self, a: CellAction, raw: bytes) -> tuple[bytes | None, int]:
        """(the new cell as length + bytes, or None to keep it; masked cells counted)."""
        if a.kind == DETECT:
            text = _as_text(a.type_oid, a.fmt, raw)
            if text is None:
                return None, 0
            masked, found = self.policy.scrub(text)
            if not found:
                return None, 0
            if a.fmt == 1 and a.type_oid == JSONB_OID:
                return _encode("\x01" + masked), found
            return _encode(masked), found
        text = _as_text(a.type_oid, a.fmt, raw)
        if text is None:
            text = "\\x" + raw.hex()
        value = a.strategy.apply(text)
        return (_NULL_CELL if value is None else _encode(value)), 1


_CACHE_LIMIT: Final = 4096
_NUL: Final = re.compile("\x00")
_NULL_CELL: Final = b"\xff\xff\xff\xff"


def _cached(
    cell: Callable[[CellAction, bytes], tuple[bytes | None, int]], action: CellAction
) -> rk.CellCall:
    """`cell(action, raw)` remembering up to `_CACHE_LIMIT` values (it is deterministic)."""
    cache: dict[bytes, tuple[bytes | None, int]] = {}

    def call(raw: bytes) -> tuple[bytes | None, int]:
        got = cache.get(raw)
        if got is None:
            got = cell(action, raw)
            if len(cache) < _CACHE_LIMIT:
                cache[raw] = got
        return got

    return call


def _encode(text: str) -> bytes:
    data = text.encode("utf-8", "replace")
    return _I32.pack(len(data)) + data


def _as_text(type_oid: int, fmt: int, raw: bytes) -> str | None:
    """The value as text when we can read it: text format, or binary of a known type."""
    if fmt == 0 or type_oid in TEXT_LIKE:
        data = raw
        if fmt == 1 and type_oid == JSONB_OID and data[:1] == b"\x01":
            data = data[1:]
        return data.decode("utf-8", "replace")
    decoder = _BINARY.get(type_oid)
    return decoder(raw) if decoder is not None else None


_BINARY: dict[int, Callable[[bytes], str]] = {
    21: lambda b: str(int.from_bytes(b, "big", signed=True)),
    23: lambda b: str(int.from_bytes(b, "big", signed=True)),
    20: lambda b: str(int.from_bytes(b, "big", signed=True)),
    26: lambda b: str(int.from_bytes(b, "big", signed=False)),
    2950: lambda b: str(uuid.UUID(bytes=b)),
}


# -- building ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a result column's values come from, as the caller resolved it."""

    direct: tuple[str, str, str] | None = None
    sources: frozenset[tuple[str, str, str]] = frozenset()
    opaque: bool = False


_NO_ORIGIN: Final = Origin()
_WHOLE_RULE = "derived"


def build(
    cols: Sequence[ResultColumn],
    origins: Sequence[Origin],
    policy: MaskPolicy,
    text_like: frozenset[int] = TEXT_LIKE,
    spec: Callable[[str, str, str], object] | None = None,
) -> tuple[MaskPlan | None, list[ResultColumn], list[str]]:
    """(plan or None, the columns to describe to the client, derived outputs' names).

    `spec(schema, table, column)` overrides `policy.column` (a session adds the tainted
    columns of its temporary tables). Derived outputs are returned so `strict` sessions
    can refuse them.
    """
    lookup = spec or policy.column
    actions: list[CellAction | None] = []
    described: list[ResultColumn] = []
    derived: list[str] = []
    for i, col in enumerate(cols):
        o = origins[i] if i < len(origins) else _NO_ORIGIN
        action: CellAction | None = None
        hit = lookup(*o.direct) if o.direct is not None else None
        if hit is not None:
            rule = getattr(hit, "rule", "")
            strategy = getattr(hit, "strategy", Strategy("redact"))
            action = CellAction(MASK, rule, strategy, col.type_oid, col.fmt)
        else:
            masked = [s for s in o.sources if lookup(*s) is not None]
            if masked or (o.opaque and policy.columns):
                strategies = [getattr(lookup(*s), "strategy", None) for s in masked]
                all_null = bool(strategies) and all(
                    s is not None and s.name == "null" for s in strategies
                )
                strategy = Strategy("null") if all_null else Strategy("redact")
                rule = getattr(lookup(*masked[0]), "rule", _WHOLE_RULE) if masked else "opaque"
                action = CellAction(WHOLE, rule, strategy, col.type_oid, col.fmt)
                derived.append(col.name.decode("utf-8", "replace"))
            elif policy.detectors and col.type_oid in text_like:
                action = CellAction(
                    DETECT, policy.detect_rule, policy.detect_strategy, col.type_oid, col.fmt
                )
        actions.append(action)
        if action is not None and _retype(action, col, text_like):
            col = replace(col, type_oid=TEXT_OID, typlen=-1, typmod=-1)
        described.append(col)
    if all(a is None for a in actions):
        return None, list(cols), derived
    return MaskPlan(actions, policy, text_like=text_like), described, derived


def _retype(action: CellAction, col: ResultColumn, text_like: frozenset[int]) -> bool:
    if action.kind == DETECT or not action.strategy.changes_type:
        return False
    # Plain string types keep their type (clients do not check varchar's length); json,
    # jsonb and xml would not parse "****", so they become text like every other type.
    return col.type_oid not in text_like or col.type_oid in (114, 142, JSONB_OID)


def null_rows(buf: bytes | bytearray | memoryview, start: int, stop: int) -> bytes:
    """DataRows in `buf[start:stop]` with every cell NULL: for rows nobody described.

    NULL is valid for every type, so a client decoding blindly still parses the rows.
    """
    out = bytearray()
    pos = start
    while pos < stop:
        (length,) = _I32.unpack_from(buf, pos + 1)
        (count,) = struct.unpack_from("!h", buf, pos + 5)
        out += b"D" + _I32.pack(6 + 4 * count) + struct.pack("!h", count)
        out += b"\xff\xff\xff\xff" * count
        pos += 1 + length
    return bytes(out)
