"""The row-rewrite kernel: masks planned cells of a run of DataRows, copying the rest.

`rewrite(data, start, stop, ops)` returns the rewritten rows and the masked-cell count of
each op. `ops` holds one `CellOp` tuple per planned column, in field order:
`(field index, op, cell, keep_last, key, hash_chars, call, table)`:

- `REDACT`: every non-NULL value becomes `cell` (a length-prefixed cell, fixed per plan);
- `NULL`: every non-NULL value becomes NULL;
- `PARTIAL` / `HASH`: `strategies.partial(value, keep_last)` / `"h:"` + the first
  `hash_chars` hex digits of HMAC-SHA256(`key`, value), for ASCII values; other values go
  to `call`, as text decoding decides there;
- `CALL`: `call(raw) -> (new cell or None to keep it, masked count)` (content detection,
  binary values of non-text types);
- `TABLE`: `table[row]` is the new cell of the call's row-th row, or None to keep it
  (content detection done for a whole run at once; the caller counts those cells).

`joined(data, start, stop, index)` is field `index` of every row, `b"\0"` between (NULL
as empty), and the number of rows: what content detection scans in one pass.

NULL cells are never touched nor counted. A compiled twin (`_rowkernel`, built from
`_rowkernel.c` at install when a C compiler and OpenSSL headers are there) does the same
without a Python step per cell; `KERNEL` is the one in use, and both are tested alike.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from lockgate.masking.strategies import partial

REDACT, NULL, PARTIAL, HASH, CALL, TABLE = 1, 2, 3, 4, 5, 6

CellCall = Callable[[bytes], tuple[bytes | None, int]]
CellOp = tuple[int, int, bytes, int, bytes, int, CellCall, list[bytes | None] | None]

_I32: Final = struct.Struct("!i")
_NULL_CELL: Final = b"\xff\xff\xff\xff"


class Kernel(Protocol):
    def __call__(
        self, data: bytes | bytearray | memoryview, start: int, stop: int, ops: tuple[CellOp, ...]
    ) -> tuple[bytes, list[int]]: ...


class Joiner(Protocol):
    def __call__(
        self, data: bytes | bytearray | memoryview, start: int, stop: int, index: int
    ) -> tuple[bytes, int]: ...


def _cell(text: bytes) -> bytes:
    return _I32.pack(len(text)) + text


def _fast(op: CellOp, raw: bytes) -> bytes | None:
    """The masked cell of an ASCII value for PARTIAL/HASH (None: not ASCII, ask `call`)."""
    if not raw.isascii():
        return None
    if op[1] == PARTIAL:
        return _cell(partial(raw.decode("ascii"), op[3]).encode("ascii"))
    digest = hmac.digest(op[4], raw, "sha256").hex()
    return _cell(b"h:" + digest[: op[5]].encode("ascii"))


def rewrite(
    data: bytes | bytearray | memoryview, start: int, stop: int, ops: Sequence[CellOp]
) -> tuple[bytes, list[int]]:
    """DataRows `data[start:stop]` with planned cells masked; masked cells per op."""
    buf = data if isinstance(data, bytes | bytearray) else bytes(data)
    unpack = _I32.unpack_from
    counts = [0] * len(ops)
    # Deterministic ops (all of them: detection and strategies depend on the value only)
    # give the same cell for the same value: cache per op, bounded.
    caches: list[dict[bytes, tuple[bytes | None, int]]] = [{} for _ in ops]
    out = bytearray()
    pos = start
    row = -1
    while pos < stop:
        row += 1
        if buf[pos] != 0x44 or stop - pos < 7:
            raise ValueError("not a DataRow")
        (length,) = unpack(buf, pos + 1)
        end = pos + 1 + length
        if length < 6 or end > stop:
            raise ValueError("malformed DataRow: a field runs past the message")
        (nfields,) = struct.unpack_from("!h", buf, pos + 5)
        p = pos + 7
        field = 0
        copied = -1
        row_start = len(out)
        for k, op in enumerate(ops):
            idx = op[0]
            if idx >= nfields:
                raise ValueError("malformed DataRow: a field runs past the message")
            while field < idx:
                if end - p < 4:
                    raise ValueError("malformed DataRow: a field runs past the message")
                (n,) = unpack(buf, p)
                p += 4 + (n if n > 0 else 0)
                field += 1
            if end - p < 4:
                raise ValueError("malformed DataRow: a field runs past the message")
            (n,) = unpack(buf, p)
            field += 1
            if n < 0:
                p += 4
                continue
            if end - p - 4 < n:
                raise ValueError("malformed DataRow: a field runs past the message")
            kind = op[1]
            new: bytes | None
            if kind == REDACT:
                new, found = op[2], 1
            elif kind == NULL:
                new, found = _NULL_CELL, 1
            elif kind == TABLE:
                table = op[7]
                if table is None or row >= len(table):
                    raise ValueError("a table op has fewer cells than rows")
                new, found = table[row], 0
            else:
                raw = bytes(buf[p + 4 : p + 4 + n])
                cache = caches[k]
                got = cache.get(raw)
                if got is None:
                    fast = _fast(op, raw) if kind != CALL else None
                    got = (fast, 1) if fast is not None else op[6](raw)
                    if len(cache) < _CACHE_LIMIT:
                        cache[raw] = got
                new, found = got
            counts[k] += found
            if new is not None:
                if copied < 0:
                    out += b"D\x00\x00\x00\x00"
                    out += buf[pos + 5 : pos + 7]
                    copied = pos + 7
                out += buf[copied:p]
                out += new
                copied = p + 4 + n
            p += 4 + n
        if copied < 0:
            out += buf[pos:end]
        else:
            out += buf[copied:end]
            _I32.pack_into(out, row_start + 1, len(out) - row_start - 1)
        pos = end
    return bytes(out), counts


_CACHE_LIMIT: Final = 4096


def joined(
    data: bytes | bytearray | memoryview, start: int, stop: int, index: int
) -> tuple[bytes, int]:
    """(field `index` of each DataRow in `data[start:stop]`, `b"\0"` between, row count)."""
    buf = data if isinstance(data, bytes | bytearray) else bytes(data)
    unpack = _I32.unpack_from
    parts: list[bytes] = []
    pos = start
    while pos < stop:
        if buf[pos] != 0x44 or stop - pos < 7:
            raise ValueError("not a DataRow")
        (length,) = unpack(buf, pos + 1)
        end = pos + 1 + length
        (nfields,) = struct.unpack_from("!h", buf, pos + 5)
        if length < 6 or end > stop or index >= nfields:
            raise ValueError("malformed DataRow: a field runs past the message")
        p = pos + 7
        for _ in range(index):
            if end - p < 4:
                raise ValueError("malformed DataRow: a field runs past the message")
            (n,) = unpack(buf, p)
            p += 4 + (n if n > 0 else 0)
        if end - p < 4:
            raise ValueError("malformed DataRow: a field runs past the message")
        (n,) = unpack(buf, p)
        if end - p - 4 < n:
            raise ValueError("malformed DataRow: a field runs past the message")
        parts.append(bytes(buf[p + 4 : p + 4 + n]) if n > 0 else b"")
        pos = end
    return b"\0".join(parts), len(parts)


class Compiled(Protocol):
    rewrite: Kernel
    joined: Joiner


def _compiled() -> Compiled | None:
    try:
        from lockgate.masking import _rowkernel  # type: ignore[attr-defined]
    except ImportError:
        return None
    mod: Compiled = _rowkernel
    return mod


_C: Final = _compiled()
PYTHON: Final[Kernel] = rewrite
COMPILED: Final[Kernel | None] = _C.rewrite if _C is not None else None
JOINED_PYTHON: Final[Joiner] = joined
JOINED_COMPILED: Final[Joiner | None] = _C.joined if _C is not None else None
# The kernels in use (tests swap them to run every case with both).
KERNEL: Kernel = COMPILED or PYTHON
JOINED: Joiner = JOINED_COMPILED or JOINED_PYTHON
