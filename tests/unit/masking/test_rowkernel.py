"""The row-rewrite kernel: the compiled and the pure-Python one give the same bytes."""

from __future__ import annotations

import hmac
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate.masking import rowkernel as rk
from lockgate.masking.strategies import partial

KERNELS = [pytest.param(rk.PYTHON, id="python")]
if rk.COMPILED is not None:
    KERNELS.append(pytest.param(rk.COMPILED, id="compiled"))


def _row(*cells: bytes | None) -> bytes:
    body = struct.pack("!h", len(cells))
    for c in cells:
        body += b"\xff\xff\xff\xff" if c is None else struct.pack("!i", len(c)) + c
    return b"D" + struct.pack("!i", len(body) + 4) + body


def _cells(rows: bytes) -> list[list[bytes | None]]:
    out = []
    pos = 0
    while pos < len(rows):
        assert rows[pos : pos + 1] == b"D"
        (length,) = struct.unpack_from("!i", rows, pos + 1)
        (count,) = struct.unpack_from("!h", rows, pos + 5)
        p = pos + 7
        row: list[bytes | None] = []
        for _ in range(count):
            (n,) = struct.unpack_from("!i", rows, p)
            row.append(None if n < 0 else rows[p + 4 : p + 4 + n])
            p += 4 + max(n, 0)
        assert p == pos + 1 + length
        out.append(row)
        pos = p
    return out


def _called(raw: bytes) -> tuple[bytes | None, int]:
    if raw == b"x":
        return None, 0
    text = b"<" + raw.upper() + b">"
    return struct.pack("!i", len(text)) + text, 2


KEY = b"secret key"
OPS: tuple[rk.CellOp, ...] = (
    (1, rk.PARTIAL, b"", 4, b"", 16, _called, None),
    (2, rk.HASH, b"", 0, KEY, 16, _called, None),
    (3, rk.REDACT, b"\x00\x00\x00\x04****", 0, b"", 16, _called, None),
    (4, rk.NULL, b"", 0, b"", 16, _called, None),
    (6, rk.CALL, b"", 0, b"", 16, _called, None),
)


@pytest.mark.parametrize("kernel", KERNELS)
def test_each_op(kernel: rk.Kernel) -> None:
    rows = _row(b"1", b"123-45-6789", b"a", b"b", b"c", b"keep", b"abc") + _row(
        b"2", "jäne@example.com".encode(), "ü".encode(), None, b"", b"keep", b"x"
    )
    out, counts = kernel(b"pad" + rows + b"tail", 3, 3 + len(rows), OPS)
    digest = hmac.digest(KEY, b"a", "sha256").hex()[:16].encode()
    assert _cells(out) == [
        [b"1", b"***-**-6789", b"h:" + digest, b"****", None, b"keep", b"<ABC>"],
        # Non-ASCII values of partial and hash go to the callback; NULL stays NULL.
        [b"2", b"<J\xc3\xa4NE@EXAMPLE.COM>", b"<\xc3\xbc>", None, None, b"keep", b"x"],
    ]
    assert counts == [1 + 2, 1 + 2, 1, 2, 2]  # an empty value is a value


@pytest.mark.parametrize("kernel", KERNELS)
def test_untouched_rows_are_copied_and_malformed_rows_refused(kernel: rk.Kernel) -> None:
    rows = _row(b"1", None, None, None, None, b"k", b"x")
    assert kernel(rows, 0, len(rows), OPS) == (rows, [0, 0, 0, 0, 0])
    short = _row(b"1", b"2")
    with pytest.raises(ValueError):
        kernel(short, 0, len(short), OPS)
    cut = bytearray(_row(b"1", b"2345"))
    struct.pack_into("!i", cut, 11, 99)  # the second field claims more than the row holds
    with pytest.raises(ValueError):
        kernel(bytes(cut), 0, len(cut), ((1, rk.HASH, b"", 0, KEY, 16, _called, None),))


values = st.one_of(st.none(), st.binary(max_size=40), st.text(max_size=20).map(str.encode))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(values, values, values), min_size=1, max_size=6), st.integers(0, 8))
def test_compiled_matches_python(rows: list[tuple[bytes | None, ...]], keep: int) -> None:
    if rk.COMPILED is None:
        pytest.skip("the compiled kernel is not built")
    ops: tuple[rk.CellOp, ...] = (
        (0, rk.PARTIAL, b"", keep, b"", 16, _called, None),
        (2, rk.HASH, b"", 0, KEY * keep, keep * 8, _called, None),
    )
    data = b"".join(_row(*r) for r in rows)
    assert rk.COMPILED(data, 0, len(data), ops) == rk.PYTHON(data, 0, len(data), ops)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=30), st.integers(0, 6))
def test_partial_matches_the_strategy(value: str, keep: int) -> None:
    ops: tuple[rk.CellOp, ...] = ((0, rk.PARTIAL, b"", keep, b"", 16, _called, None),)
    data = _row(value.encode())
    for kernel in [p.values[0] for p in KERNELS]:
        out, _ = kernel(data, 0, len(data), ops)  # type: ignore[operator]
        assert _cells(out) == [[partial(value, keep).encode()]]


@pytest.mark.parametrize("kernel", KERNELS)
def test_table_op_takes_cells_by_row(kernel: rk.Kernel) -> None:
    rows = _row(b"a") + _row(None) + _row(b"c")
    table: list[bytes | None] = [b"\x00\x00\x00\x01A", b"\x00\x00\x00\x01B", None]
    out, counts = kernel(rows, 0, len(rows), ((0, rk.TABLE, b"", 0, b"", 16, _called, table),))
    assert _cells(out) == [[b"A"], [None], [b"c"]]  # NULL stays NULL; counted by the caller
    assert counts == [0]
    with pytest.raises(ValueError):
        kernel(rows, 0, len(rows), ((0, rk.TABLE, b"", 0, b"", 16, _called, table[:1]),))
