"""Result capture: caps, row descriptions of prepared statements, scrubbed parameters."""

from __future__ import annotations

from tests.unit.protocols.postgres.test_results import complete, data_row, row_description

from lockgate.config.model import ResultCapture
from lockgate.protocols.postgres.results import decode
from lockgate.proxy.pg_capture import _SECRETS, _SHORTEST_SECRET, SessionCapture, scrub_params

Q, E = ord("Q"), ord("E")


def run(n: int, start: int = 1) -> bytes:
    return b"".join(data_row(str(i).encode()) for i in range(start, start + n))


def test_query_rows_capped_and_counted() -> None:
    cap = SessionCapture(ResultCapture(rows=2, bytes="full"))
    taken = cap.statement(Q, "")
    cap.description(taken, row_description(("n", 0)))
    rows = run(5)
    # Two runs, as two chunks from upstream would give them.
    cap.rows(taken, rows, 0, len(data_row(b"1")) * 3)
    cap.rows(taken, rows, len(data_row(b"1")) * 3, len(rows))
    cap.completed(taken, complete("SELECT 5"), 5)
    got = cap.result(taken)
    assert got is not None
    assert (got.rows, got.rows_dropped, got.bytes_dropped) == (2, 3, 3 * len(data_row(b"1")))
    (rs,) = decode(got.data)
    assert rs.rows == [["1"], ["2"]] and rs.tag == "SELECT 5"


def test_byte_cap_keeps_whole_rows_only() -> None:
    size = len(data_row(b"1"))
    cap = SessionCapture(ResultCapture(rows="full", bytes=size * 2 + 3))
    taken = cap.statement(Q, "")
    rows = run(4)
    cap.rows(taken, rows, 0, len(rows))
    cap.completed(taken, complete("SELECT 4"), 4)
    got = cap.result(taken)
    assert got is not None
    assert (got.rows, got.rows_dropped, got.bytes_dropped) == (2, 2, 2 * size)


def test_execute_gets_its_statements_description() -> None:
    cap = SessionCapture(ResultCapture())
    cap.parsed("s1")
    cap.bound("", "s1")
    describe = cap.describing(b"P\x00")
    assert describe == "s1"
    cap.description(describe, row_description(("email", 0)))
    for value in (b"a", b"b"):
        taken = cap.statement(E, "")
        row = data_row(value)
        cap.rows(taken, row, 0, len(row))
        cap.completed(taken, complete("SELECT 1"), 1)
        got = cap.result(taken)
        assert got is not None and got.rows_dropped == 0
        (rs,) = decode(got.data)
        assert rs.columns == ["email"] and rs.rows == [[value.decode()]]
    # A new Parse of the statement forgets the old description.
    cap.parsed("s1")
    taken = cap.statement(E, "")
    row = data_row(b"c")
    cap.rows(taken, row, 0, len(row))
    got = cap.result(taken)
    assert got is not None and decode(got.data)[0].columns == ["column1"]


def test_statements_without_rows_capture_nothing() -> None:
    cap = SessionCapture(ResultCapture())
    taken = cap.statement(Q, "")
    cap.completed(taken, complete("INSERT 0 3"), 3)
    assert cap.result(taken) is None
    assert cap.result(None) is None


def test_suspended_portal_past_the_cap_has_unknown_dropped_rows() -> None:
    cap = SessionCapture(ResultCapture(rows=1, bytes="full"))
    taken = cap.statement(E, "")
    rows = run(3)
    cap.rows(taken, rows, 0, len(rows))
    got = cap.result(taken)
    assert got is not None and got.rows == 1 and got.rows_dropped is None


def test_params_scrubbed_of_secrets_and_by_masking() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    key = "AKIAABCDEFGHIJKLMNOP"
    got = scrub_params((jwt, f"id {key}", None, "plain"), None)
    assert got is not None
    assert jwt not in str(got) and key not in str(got)
    assert got[2:] == (None, "plain")
    params = ("a@b.example", "x")
    assert scrub_params(params, lambda t: (t.replace("a@b.example", "<email>"), 1)) == (
        "<email>",
        "x",
    )
    same = ("x", "y")
    assert scrub_params(same, None) is same


def test_values_shorter_than_any_secret_are_not_scanned_safely() -> None:
    # The premise of skipping short bind values: no secret pattern matches fewer characters.
    from re import _parser  # type: ignore[attr-defined]

    for detector in _SECRETS:
        shortest = _parser.parse(detector.pattern.pattern, detector.pattern.flags).getwidth()[0]
        assert shortest >= _SHORTEST_SECRET, detector.name


def test_unsigned_jwt_is_still_scrubbed() -> None:
    # A JWT with an empty signature part: the shape the detector accepts with the least.
    jwt = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."
    got = scrub_params((jwt,), None)
    assert got is not None and jwt not in str(got)
