"""The literal key: which constants it blanks, what it refuses, and how the analyzer trusts it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from lockgate.sql import analyze as analyze_mod
from lockgate.sql.analyze import Analyzer
from lockgate.sql.literals import LITERAL_KEY_COMPILED, literal_key_py

KEYS: list[Callable[[str], bytes | None]] = [literal_key_py]
if LITERAL_KEY_COMPILED is not None:
    KEYS.append(LITERAL_KEY_COMPILED)


@pytest.fixture(params=KEYS, ids=lambda f: "compiled" if f is LITERAL_KEY_COMPILED else "python")
def key(request: pytest.FixtureRequest) -> Callable[[str], bytes | None]:
    fn: Callable[[str], bytes | None] = request.param
    return fn


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT abalance FROM a WHERE aid = 48213;", b"SELECT abalance FROM a WHERE aid = \x01;"),
        ("SELECT 'it''s', 'x'", b"SELECT \x02, \x02"),
        ('SELECT "col""5", t1.c2 FROM t1', b'SELECT "col""5", t1.c2 FROM t1'),
        # Numbers that are not plain 32-bit integers are kept as they are.
        (
            "SELECT 1.5, .5, 1e3, 0x1F, 1_000, 12345678901",
            b"SELECT 1.5, .5, 1e3, 0x1F, 1_000, 12345678901",
        ),
        ("SELECT -7", b"SELECT -\x01"),
        ("SELECT 1 -- it's 2\n, 3", b"SELECT \x01 -- it's 2\n, \x01"),
        ("SELECT 'a'\n'b'", b"SELECT \x02\n\x02"),
        ("SELECT 'é', naïve", "SELECT \x02, naïve".encode()),
        ("", b""),
    ],
)
def test_key_blanks_plain_literals_only(
    key: Callable[[str], bytes | None], text: str, expected: bytes
) -> None:
    assert key(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "SELECT $1",
        "SELECT $$x$$",
        "SELECT E'a\\nb'",
        "SELECT 'a\\'",
        "SELECT B'101'",
        "SELECT X'ff'",
        "SELECT N'x'",
        "SELECT U&'\\0041'",
        "SELECT 1 /* c */",
        "SELECT 'open",
        'SELECT "open',
        "SELECT 1\x00",
        "SELECT \x01",
        "SELECT \ud800",
    ],
)
def test_key_refuses_what_it_cannot_read_safely(
    key: Callable[[str], bytes | None], text: str
) -> None:
    assert key(text) is None


@pytest.fixture
def normalize_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    calls: list[str] = []
    real = analyze_mod.normalize

    def counting(sql: str) -> str:
        calls.append(sql)
        return real(sql)

    monkeypatch.setattr(analyze_mod, "normalize", counting)
    yield calls


@pytest.mark.skipif(LITERAL_KEY_COMPILED is None, reason="the literal key kernel is not built")
def test_a_known_key_skips_normalize(normalize_calls: list[str]) -> None:
    a = Analyzer()
    first = a.analyze("SELECT abalance FROM a WHERE aid = 1 AND note = 'x'")
    normalize_calls.clear()
    second = a.analyze("SELECT abalance FROM a WHERE aid = 2 AND note = 'y'")
    assert normalize_calls == []
    assert second is first


@pytest.mark.skipif(LITERAL_KEY_COMPILED is None, reason="the literal key kernel is not built")
@pytest.mark.parametrize(
    ("first", "second"),
    [
        # Constants normalize keeps: the key would blank them, so it is not trusted.
        ("SELECT a, b FROM t ORDER BY 1", "SELECT a, b FROM t ORDER BY 2"),
        ("SELECT a, count(*) FROM t GROUP BY 1", "SELECT a, count(*) FROM t GROUP BY 2"),
        ("SELECT a::varchar(10) FROM t", "SELECT a::varchar(20) FROM t"),
        ("COPY t FROM '/tmp/a'", "COPY t FROM '/etc/passwd'"),
        ("CREATE TABLE x (a int DEFAULT 1)", "CREATE TABLE x (a int DEFAULT 2)"),
        # Text-dependent facts are never served by key either.
        ("SET transaction_read_only = 'on'", "SET transaction_read_only = 'off'"),
        ("DELETE FROM t WHERE 1 = 1", "DELETE FROM t WHERE 1 = 2"),
    ],
)
def test_a_key_coarser_than_the_shape_is_not_trusted(
    normalize_calls: list[str], first: str, second: str
) -> None:
    a = Analyzer()
    a.analyze(first)
    normalize_calls.clear()
    got = a.analyze(second)
    # It took the way through normalize, and the key was checked once, with the first.
    assert normalize_calls == [second]
    assert got == Analyzer().analyze(second)
