"""Plain DBAPI SQL text for the audit writers, in the driver's positional paramstyle.

The ingester writes with a raw DBAPI connection (no SQLAlchemy per-row work on its path);
these helpers derive the statements from the Core tables so names stay in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Dialect, Table

Marker = Callable[[int], str]


def marker(dialect: Dialect) -> Marker:
    """The placeholder for the i-th (1-based) parameter in this driver's paramstyle."""
    style = dialect.paramstyle
    if style == "qmark":
        return lambda _i: "?"
    if style in ("format", "pyformat"):
        return lambda _i: "%s"
    if style == "numeric":
        return lambda i: f":{i}"
    raise ValueError(f"the audit writer needs a positional DBAPI paramstyle, not {style}")


def insert_sql(dialect: Dialect, table: Table, columns: Sequence[str], returning: str = "") -> str:
    quote = dialect.identifier_preparer.quote
    mark = marker(dialect)
    names = ", ".join(quote(c) for c in columns)
    marks = ", ".join(mark(i + 1) for i in range(len(columns)))
    tail = f" RETURNING {quote(returning)}" if returning else ""
    return f"INSERT INTO {quote(table.name)} ({names}) VALUES ({marks}){tail}"


def update_sql(dialect: Dialect, table: Table, columns: Sequence[str], keys: Sequence[str]) -> str:
    quote = dialect.identifier_preparer.quote
    mark = marker(dialect)
    sets = ", ".join(f"{quote(c)} = {mark(i + 1)}" for i, c in enumerate(columns))
    n = len(columns)
    where = " AND ".join(f"{quote(k)} = {mark(n + i + 1)}" for i, k in enumerate(keys))
    return f"UPDATE {quote(table.name)} SET {sets} WHERE {where}"


class BulkInsert:
    """Inserts many rows into one table: COPY on PostgreSQL through psycopg 3, else executemany.

    psycopg's `executemany` sends one prepared INSERT per row through its pipeline (about
    100 µs of Python per row); `COPY … FROM STDIN` writes the rows as one stream, each row
    formatted in C. Errors are the same DBAPI classes (a duplicate is an IntegrityError).
    """

    __slots__ = ("copy", "sql")

    def __init__(self, dialect: Dialect, table: Table, columns: Sequence[str]) -> None:
        self.sql = insert_sql(dialect, table, columns)
        self.copy: str | None = None
        if dialect.name == "postgresql" and dialect.driver == "psycopg":
            quote = dialect.identifier_preparer.quote
            names = ", ".join(quote(c) for c in columns)
            self.copy = f"COPY {quote(table.name)} ({names}) FROM STDIN"

    def __call__(self, cur: Any, rows: Sequence[Sequence[Any]]) -> None:
        if self.copy is None or len(rows) == 1:
            cur.executemany(self.sql, rows)
            return
        with cur.copy(self.copy) as copy:
            write = copy.write_row
            for row in rows:
                write(row)
