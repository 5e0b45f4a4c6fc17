"""MaskPlan: plans from row descriptions, byte-level row rewriting, type adjustment."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate.config.model import Manifest
from lockgate.masking import plan as mp
from lockgate.masking import rowkernel as rk
from lockgate.masking.copy import CopyMasker
from lockgate.masking.policy import MaskPolicy
from lockgate.model import Principal
from lockgate.protocols.postgres import messages as m

CUST = ("public", "customers")


@pytest.fixture(
    autouse=True, params=["python", "compiled"] if rk.COMPILED is not None else ["python"]
)
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every plan test runs with the pure-Python kernel and with the compiled one."""
    python = request.param == "python"
    monkeypatch.setattr(rk, "KERNEL", rk.PYTHON if python else rk.COMPILED)
    monkeypatch.setattr(rk, "JOINED", rk.JOINED_PYTHON if python else rk.JOINED_COMPILED)


def _policy(groups: tuple[str, ...] = ("analyst",), **rule: object) -> MaskPolicy:
    manifest = Manifest.model_validate(
        {
            "masking": {
                "rules": [
                    {
                        "name": "pii",
                        "resources": ["db"],
                        "groups": ["analyst"],
                        "clear_groups": ["dpo"],
                        "columns": [
                            {"column": "public.customers.ssn", "strategy": "partial"},
                            {"column": "*.*.email", "strategy": "hash"},
                            {"column": "customers.salary", "strategy": "null"},
                            {"column": "customers.born", "strategy": "redact"},
                        ],
                        "detect": ["email", "ssn"],
                        **rule,
                    }
                ]
            }
        }
    )
    principal = Principal("ann", frozenset(groups))
    return MaskPolicy.for_session(manifest, principal, "db", b"key")


def _col(name: str, attnum: int, typ: int = 25, fmt: int = 0, oid: int = 1000) -> mp.ResultColumn:
    return mp.ResultColumn(name.encode(), oid, attnum, typ, -1, -1, fmt)


def _row(*cells: bytes | None) -> bytes:
    body = struct.pack("!h", len(cells))
    for c in cells:
        body += b"\xff\xff\xff\xff" if c is None else struct.pack("!i", len(c)) + c
    return m.message(b"D", body)


def _cells(message: bytes) -> list[bytes | None]:
    out: list[bytes | None] = []
    (count,) = struct.unpack_from("!h", message, 5)
    pos = 7
    for _ in range(count):
        (n,) = struct.unpack_from("!i", message, pos)
        pos += 4
        out.append(None if n < 0 else message[pos : pos + n])
        pos += max(n, 0)
    return out


def test_policy_applies_to_groups_but_not_clear_ones() -> None:
    assert _policy().active
    assert not _policy(("dpo", "analyst")).active
    assert not _policy(("other",)).active
    assert _policy().column("public", "customers", "SSN") is not None
    assert _policy().column("sales", "leads", "email") is not None
    assert _policy().column("public", "customers", "name") is None


def test_plan_masks_by_origin_not_by_name() -> None:
    policy = _policy()
    cols = [_col("x", 1), _col("name", 2), _col("y", 3, typ=23)]
    origins = [
        mp.Origin((*CUST, "ssn")),
        mp.Origin((*CUST, "name")),
        mp.Origin((*CUST, "salary")),
    ]
    plan, described, _ = mp.build(cols, origins, policy)
    assert plan is not None
    rows = _row(b"123-45-6789", b"Jane a@b.co", b"100") + _row(None, b"ok", b"7")
    out = plan.rewrite_rows(rows, 0, len(rows))
    second = _row(None, b"ok", None)
    assert out.endswith(second)
    assert _cells(out[: -len(second)]) == [b"***-**-6789", b"Jane <email>", None]
    assert plan.counts == {"pii": 4}
    assert [c.type_oid for c in described] == [25, 25, 23]  # null keeps the type


def test_no_plan_when_nothing_applies() -> None:
    plan, described, _ = mp.build([_col("n", 1, typ=23)], [mp.Origin((*CUST, "id"))], _policy())
    assert plan is None and described[0].type_oid == 23


def test_derived_outputs_masked_whole_and_types_adjusted() -> None:
    policy = _policy()
    cols = [_col("upper", 0, oid=0), _col("b", 0, typ=1082, oid=0), _col("j", 0, typ=114, oid=0)]
    origins = [
        mp.Origin(None, frozenset({(*CUST, "ssn")})),
        mp.Origin((*CUST, "born")),
        mp.Origin(None, frozenset({(*CUST, "email"), (*CUST, "name")})),
    ]
    plan, described, derived = mp.build(cols, origins, policy)
    assert plan is not None
    assert derived == ["upper", "j"]
    assert [c.type_oid for c in described] == [25, 25, 25]
    row = _row(b"123-45-6789", b"2000-01-01", b'{"email": "a@b.co"}')
    assert _cells(plan.rewrite_rows(row, 0, len(row))) == [b"****", b"****", b"****"]
    # The RowDescription round-trips through the builder.
    again = mp.parse_row_description(mp.row_description(described)[5:])
    assert again == described


def test_binary_cells() -> None:
    policy = _policy()
    cols = [_col("s", 1, typ=25, fmt=1), _col("e", 2, typ=23, fmt=1)]
    origins = [mp.Origin((*CUST, "ssn")), mp.Origin((*CUST, "email"))]
    plan, described, _ = mp.build(cols, origins, policy)
    assert plan is not None
    row = _row(b"123-45-6789", struct.pack("!i", 42))
    cells = _cells(plan.rewrite_rows(row, 0, len(row)))
    assert cells[0] == b"***-**-6789"
    assert cells[1] is not None and cells[1].startswith(b"h:")
    assert described[1].type_oid == 25


def test_null_rows_for_undescribed_results() -> None:
    row = _row(b"a", b"b")
    assert _cells(mp.null_rows(row, 0, len(row))) == [None, None]


def test_opaque_outputs_are_masked_when_columns_are_ruled() -> None:
    plan, _, derived = mp.build([_col("f", 0, oid=0)], [mp.Origin(opaque=True)], _policy())
    assert plan is not None and derived == ["f"]


def test_copy_text_csv_binary() -> None:
    policy = _policy()
    cols = [_col("id", 0, typ=23), _col("ssn", 0), _col("notes", 0)]
    origins = [mp.Origin((*CUST, "id")), mp.Origin((*CUST, "ssn")), mp.Origin((*CUST, "notes"))]
    plan, _, _ = mp.build(cols, origins, policy)
    assert plan is not None
    text = CopyMasker(plan, "text")
    assert (
        text.rewrite(b"1\t123-45-6789\tmail a@b.co\\tx\n") == b"1\t***-**-6789\tmail <email>\\tx\n"
    )
    assert text.rewrite(b"2\t\\N\tnone\n") == b"2\t\\N\tnone\n"
    csv = CopyMasker(plan, "csv", delimiter=",", null="", skip_header=True)
    assert csv.rewrite(b"id,ssn,notes\n") == b"id,ssn,notes\n"
    assert csv.rewrite(b'1,123-45-6789,"a ""q"", a@b.co"\n') == (
        b'1,"***-**-6789","a ""q"", <email>"\n'
    )
    binary = CopyMasker(plan, "binary")
    header = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
    tup = struct.pack("!h", 3) + b"".join(
        struct.pack("!i", len(v)) + v for v in (struct.pack("!i", 1), b"123-45-6789", b"x")
    )
    out = binary.rewrite(header + tup)
    assert out.startswith(header) and b"123-45-6789" not in out and b"***-**-6789" in out
    assert binary.rewrite(struct.pack("!h", -1)) == struct.pack("!h", -1)


PIECES = [
    "123-45-6789",
    "078-05-1120",
    "a.b@example.org",
    "x@y",
    "4111 1111 1111 1111",
    "4111 1111 1111 1112",
    "GB82 WEST 1234 5698 7654 32",
    "10.0.0.1",
    "fe80::1",
    "AKIAIOSFODNN7EXAMPLE",
    "-----BEGIN PRIVATE KEY-----abc",
    "+1 415-555-0134",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
    "-",
    "@",
    "é",
    " ",
    "9",
]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=5)), max_size=5).map(
                "".join
            ),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_run_wide_detection_finds_what_each_cell_scan_finds(values: list[str | None]) -> None:
    """The one-pass scan of a run masks exactly what scanning every cell would."""
    policy = _policy(detect=["all"])
    plan, _, _ = mp.build([_col("n", 1), _col("notes", 2)], [mp.Origin(), mp.Origin()], policy)
    assert plan is not None
    clean = [None if v is None else v.replace("\x00", "") for v in values]
    data = b"".join(_row(b"1", None if v is None else v.encode()) for v in clean)
    cells = [c for row in _split(plan.rewrite_rows(data, 0, len(data))) for c in row[1:]]
    expected: list[bytes | None] = []
    total = 0
    for v in clean:
        if v is None:
            expected.append(None)
            continue
        masked, found = policy.scrub(v)
        total += found
        expected.append(masked.encode())
    assert cells == expected
    assert plan.counts.get("pii", 0) == total


def _split(rows: bytes) -> list[list[bytes | None]]:
    out = []
    pos = 0
    while pos < len(rows):
        (length,) = struct.unpack_from("!i", rows, pos + 1)
        out.append(_cells(rows[pos : pos + 1 + length]))
        pos += 1 + length
    return out


def test_joined_values_of_one_column() -> None:
    data = _row(b"1", b"a") + _row(b"2", None) + _row(b"3", b"")
    for join in (rk.JOINED_PYTHON, rk.JOINED_COMPILED):
        if join is not None:
            assert join(data, 0, len(data), 1) == (b"a\x00\x00", 3)
            assert join(data, 0, 0, 1) == (b"", 0)
