"""Statement facts: one test per fact with a statement that matches and near-misses that don't."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate.sql.analyze import Analyzer, StatementFacts


def facts(sql: str) -> StatementFacts:
    analysis = Analyzer().analyze(sql)
    assert analysis.error is None, analysis.error
    assert len(analysis.statements) == 1
    return analysis.statements[0]


def flags(sql: str) -> frozenset[str]:
    return facts(sql).flags


# ------------------------------------------------------------------------------ kinds
@pytest.mark.parametrize(
    ("sql", "kinds"),
    [
        ("SELECT 1", {"select"}),
        ("insert into a select * from b", {"insert", "select"}),
        ("UPDATE t SET a = 1 WHERE id = 2", {"update"}),
        ("delete from t where id = 1", {"delete"}),
        ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", {"merge", "delete"}),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", {"select", "delete"}),
        ("EXPLAIN ANALYZE DELETE FROM t", {"explain", "delete"}),
        ("EXPLAIN (ANALYZE true) UPDATE t SET a = 1", {"explain", "update"}),
        ("EXPLAIN DELETE FROM t", {"explain"}),
        ("EXPLAIN (ANALYZE off) DELETE FROM t", {"explain"}),
        ("COPY (DELETE FROM t RETURNING *) TO STDOUT", {"copy", "copy_to", "delete"}),
        ("COPY t FROM STDIN", {"copy", "copy_from"}),
        ("CREATE TABLE x AS SELECT * FROM t", {"create_table_as", "ddl", "select"}),
        ("SELECT * INTO x FROM t", {"create_table_as", "ddl"}),
        ("PREPARE p AS DELETE FROM t", {"prepare", "delete"}),
        ("DrOp /* a comment */ TaBlE t", {"drop", "ddl"}),
        ("ALTER TABLE t ADD COLUMN c int", {"alter", "ddl"}),
        ("CREATE INDEX ON t (a)", {"index", "ddl"}),
        ("CREATE VIEW v AS SELECT * FROM t", {"view", "ddl"}),
        ("TRUNCATE a, b", {"truncate"}),
        ("GRANT SELECT ON t TO bob", {"grant"}),
        ("REVOKE SELECT ON t FROM bob", {"revoke"}),
        ("CALL p()", {"call"}),
        ("SET work_mem = '1MB'", {"set"}),
        ("RESET work_mem", {"reset"}),
        ("BEGIN", {"transaction"}),
        ("DECLARE c CURSOR FOR SELECT * FROM t", {"declare", "select"}),
    ],
)
def test_kinds_include_nested_statements(sql: str, kinds: set[str]) -> None:
    assert facts(sql).kinds == kinds


def test_a_view_definition_does_not_execute_its_query() -> None:
    f = facts("CREATE VIEW v AS SELECT * FROM t")
    assert "select" not in f.kinds
    assert f.writes == ("v",)
    assert f.reads == ("t",)


# ------------------------------------------------------------------------- relations
def test_reads_and_writes_are_told_apart_and_schema_qualified() -> None:
    f = facts("INSERT INTO s.a SELECT * FROM b JOIN c.d ON true")
    assert f.writes == ("s.a",)
    assert set(f.reads) == {"b", "c.d"}


def test_quoted_and_unicode_escaped_names_are_the_server_names() -> None:
    assert facts('DELETE FROM "T" WHERE id = 1').writes == ("T",)
    assert facts('DELETE FROM U&"\\0074" WHERE id = 1').writes == ("t",)


def test_cte_names_are_not_tables() -> None:
    f = facts("WITH d AS (SELECT * FROM t) SELECT * FROM d")
    assert f.reads == ("t",)


def test_drop_and_truncate_write_their_targets() -> None:
    assert facts("DROP TABLE s.a, b").writes == ("s.a", "b")
    assert facts("TRUNCATE t").writes == ("t",)
    assert facts("COPY t FROM STDIN").writes == ("t",)
    assert facts("COPY t TO STDOUT").reads == ("t",)


# ------------------------------------------------------------------- unbounded writes
@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM t",
        "UPDATE t SET a = 1",
        "delete from t where 1=1",
        "delete from t where true",
        "delete from t where 'a'='a'",
        "delete from t where NOT false",
        "delete from t where 1=1 OR x > 3",
        "delete from t where 2 > 1",
        "delete from t where 't'::boolean",
        "delete from t where id = id",
        "delete from t where $1",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT 1",
        "EXPLAIN ANALYZE UPDATE t SET a = 1 WHERE 1 = 1",
    ],
)
def test_unbounded_write(sql: str) -> None:
    assert "unbounded_write" in flags(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM t WHERE id = 1",
        "delete from t where 1=2",
        "delete from t where 1=1 AND id = 3",
        "delete from t where NOT true OR id = 3",
        "delete from t where id = $1",
        "delete from t where 'a' = 'b'",
        "UPDATE t SET a = 1 WHERE CURRENT OF c",
        "EXPLAIN DELETE FROM t",
        "SELECT * FROM t",
        "INSERT INTO t VALUES (1)",
    ],
)
def test_bounded_write_near_misses(sql: str) -> None:
    assert "unbounded_write" not in flags(sql)


# --------------------------------------------------------------- files, programs, remote
@pytest.mark.parametrize(
    ("sql", "flag"),
    [
        ("COPY t TO PROGRAM 'cat'", "copy_program"),
        ("COPY t FROM PROGRAM 'curl x'", "copy_program"),
        ("COPY t TO '/tmp/x'", "server_file"),
        ("COPY t FROM '/etc/passwd'", "server_file"),
        ("SELECT pg_read_file('x')", "server_file"),
        ("SELECT PG_CATALOG.PG_READ_BINARY_FILE('x')", "server_file"),
        ("SELECT \"pg_ls_dir\"('.')", "server_file"),
        ("SELECT * FROM pg_ls_dir('.')", "server_file"),
        ("SELECT lo_export(1, '/tmp/x')", "server_file"),
        ("SELECT lo_import('/etc/passwd')", "large_object"),
        ("SELECT x FROM t WHERE y IN (SELECT lo_get(1))", "large_object"),
        ("SELECT * FROM dblink('h', 'select 1') AS t(a int)", "remote_access"),
        ("CREATE EXTENSION postgres_fdw", "remote_access"),
        ("CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw", "remote_access"),
        ("LOAD 'somelib'", "server_file"),
    ],
)
def test_server_escapes(sql: str, flag: str) -> None:
    assert flag in flags(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "COPY t TO STDOUT",
        "COPY t FROM STDIN",
        "SELECT 'pg_read_file(x)'",
        "SELECT pg_read_file FROM t",
        "SELECT my_read_file('x')",
        "CREATE EXTENSION pgcrypto",
    ],
)
def test_server_escape_near_misses(sql: str) -> None:
    assert not flags(sql) & {"copy_program", "server_file", "large_object", "remote_access"}


# ------------------------------------------------------------- roles, system, code
@pytest.mark.parametrize(
    ("sql", "flag"),
    [
        ("SET ROLE admin", "role_switch"),
        ("SET SESSION AUTHORIZATION bob", "role_switch"),
        ("RESET ROLE", "role_switch"),
        ("SELECT set_config('role', 'admin', false)", "role_switch"),
        ("ALTER SYSTEM SET work_mem = '1MB'", "alter_system"),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "create_function"),
        ("CREATE OR REPLACE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'", "create_function"),
        ("CREATE EXTENSION pgcrypto", "create_extension"),
        ("DO $$BEGIN NULL; END$$", "dynamic_sql"),
        (
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$BEGIN EXECUTE 'x'; END$$",
            "dynamic_sql",
        ),
        (
            "CREATE FUNCTION f() RETURNS SETOF int LANGUAGE plpgsql AS "
            "$$BEGIN RETURN QUERY EXECUTE 'select 1'; END$$",
            "dynamic_sql",
        ),
        ("SELECT query_to_xml('delete from t', true, true, '')", "dynamic_sql"),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE plpython3u AS 'return 1'", "dynamic_sql"),
    ],
)
def test_roles_system_and_code(sql: str, flag: str) -> None:
    assert flag in flags(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SET work_mem = '1MB'",
        "SELECT current_setting('role')",
        "SELECT set_config('work_mem', '1MB', false)",
        "ALTER TABLE t ADD COLUMN c int",
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$BEGIN DELETE FROM t; END$$",
        "SELECT 'DO $$ x $$'",
    ],
)
def test_roles_system_and_code_near_misses(sql: str) -> None:
    assert not flags(sql) & {"role_switch", "alter_system", "dynamic_sql"}


def test_function_bodies_are_analysed_without_executing() -> None:
    f = facts(
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS "
        "'DELETE FROM t; SELECT pg_read_file(''x'')'"
    )
    assert "server_file" in f.flags
    assert "delete" not in f.kinds  # nothing runs when a function is created
    assert "unbounded_write" not in f.flags


def test_do_blocks_execute_their_static_sql() -> None:
    f = facts("DO $$BEGIN DELETE FROM t; PERFORM pg_ls_dir('.'); END$$")
    assert {"do", "delete"} <= f.kinds
    assert {"dynamic_sql", "unbounded_write", "server_file"} <= f.flags


# ---------------------------------------------------------------- read-only escapes
@pytest.mark.parametrize(
    "sql",
    [
        "SET default_transaction_read_only = off",
        "SET SESSION default_transaction_read_only TO false",
        "set local default_transaction_read_only = 0",
        "SET default_transaction_read_only TO DEFAULT",
        "RESET default_transaction_read_only",
        "SET transaction_read_only = off",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "SET TRANSACTION READ WRITE",
        "BEGIN READ WRITE",
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE",
        "RESET ALL",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "SELECT set_config(name, 'off', false) FROM (SELECT 'transaction_read_only') s(name)",
        "ALTER ROLE me SET default_transaction_read_only = off",
    ],
)
def test_read_only_escapes(sql: str) -> None:
    assert "read_only_escape" in flags(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SET default_transaction_read_only = on",
        "SET transaction_read_only TO true",
        "BEGIN READ ONLY",
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "BEGIN",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "RESET work_mem",
        "SHOW default_transaction_read_only",
        "SELECT current_setting('default_transaction_read_only')",
    ],
)
def test_read_only_escape_near_misses(sql: str) -> None:
    assert "read_only_escape" not in flags(sql)


# ----------------------------------------------------------------------------- caching
def test_shape_cache_never_serves_text_dependent_facts() -> None:
    a = Analyzer()
    assert "unbounded_write" in a.analyze("DELETE FROM t WHERE 1 = 1").statements[0].flags
    # Same shape, different constants: must be analysed again.
    assert "unbounded_write" not in a.analyze("DELETE FROM t WHERE 1 = 2").statements[0].flags
    assert "read_only_escape" not in a.analyze("BEGIN READ ONLY").statements[0].flags
    assert "read_only_escape" in a.analyze("BEGIN READ WRITE").statements[0].flags
    assert "dynamic_sql" not in a.analyze("DO $$BEGIN NULL; END$$ LANGUAGE sql").statements[0].kinds
    body = "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS '{}'"
    assert "server_file" not in a.analyze(body.format("SELECT 1")).statements[0].flags
    assert "server_file" in a.analyze(body.format("SELECT pg_read_file(''x'')")).statements[0].flags


def test_shape_cache_serves_shape_only_facts() -> None:
    a = Analyzer()
    first = a.analyze("SELECT * FROM t WHERE id = 1")
    assert a.analyze("SELECT * FROM t WHERE id = 2") is first
    # Qualified names are part of the shape: served too, and told apart by schema.
    qualified = a.analyze("SELECT * FROM app.t WHERE id = 1.5")
    assert a.analyze("SELECT * FROM app.t WHERE id = 2.5") is qualified
    assert a.analyze("DELETE FROM b.t WHERE id = 1").statements[0].writes == ("b.t",)
    assert a.analyze("DELETE FROM c.t WHERE id = 1").statements[0].writes == ("c.t",)


def test_caches_are_bounded_by_the_characters_they_hold() -> None:
    from lockgate.sql.analyze import _Cache

    a = Analyzer(cache_size=1000, cache_chars=64 * 200)
    for i in range(100):
        a.analyze(f"SELECT {i} AS v{i}, '{'x' * 150}'")  # distinct texts and shapes
    for cache in (a._by_text, a._by_shape):
        assert isinstance(cache, _Cache)
        assert sum(map(len, cache._items)) <= 64 * 200
    assert len(a._by_text._items) < 100  # the shapes ("SELECT $1 AS v0, $2") are short
    # The newest stay; a text over 1/64 of the budget is never kept, only analysed.
    newest = "SELECT 99 AS v99, '" + "x" * 150 + "'"
    assert a._by_text.get(newest) is a.analyze(newest)
    huge = "SELECT '" + "y" * 300 + "'"
    assert a.analyze(huge).kind == "select"
    assert a._by_text.get(huge) is None


def test_parse_errors_are_reported_not_raised() -> None:
    analysis = Analyzer().analyze("DR/**/OP TABLE t")
    assert analysis.error is not None
    assert analysis.kind == "unparsed"


# ------------------------------------------------------------------------- robustness
_TOKENS = [
    "SELECT", "DELETE", "FROM", "WHERE", "UPDATE", "SET", "(", ")", ";", ",", "'x'", "1", "=",
    "true", "t", "DO", "$$", "$$BEGIN EXECUTE 'x'; END$$", "COPY", "TO", "PROGRAM", "WITH",
    "AS", "EXPLAIN", "ANALYZE", "PREPARE", "CREATE", "FUNCTION", "LANGUAGE", "plpgsql", "sql",
    "U&\"\\0074\"", "/*", "*/", "--", "\n", "pg_read_file", "set_config", "NOT", "OR", "AND",
    "BEGIN", "READ", "WRITE", "ROLE", "RETURNING", "*", "$1", "::", "bool", "INTO", "TABLE",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_random_text_never_crashes(text: str) -> None:
    Analyzer().analyze(text)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), max_size=30))
def test_random_token_soup_never_crashes(tokens: list[str]) -> None:
    analysis = Analyzer().analyze(" ".join(tokens))
    for s in analysis.statements:
        assert isinstance(s.flags, frozenset)


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    sql = "SELECT " + "(" * 2000 + "1" + ")" * 2000
    Analyzer().analyze(sql)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # Pairs libpg_query normalizes alike (the shape) whose facts differ.
        ("DELETE FROM t WHERE 1 = 1", "DELETE FROM t WHERE 1 = 2"),
        ("DELETE FROM t WHERE true", "DELETE FROM t WHERE false"),
        ("UPDATE t SET a = 1 WHERE 'a' = 'a'", "UPDATE t SET a = 1 WHERE 'a' = 'b'"),
        ("SELECT set_config('a', 'b', false)", "SELECT set_config('role', 'b', false)"),
        ("SET transaction_read_only = 'on'", "SET transaction_read_only = 'off'"),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT pg_read_file(''x'')'",
        ),
    ],
)
def test_shape_twins_are_analysed_apart(first: str, second: str) -> None:
    from pglast.parser import normalize

    assert normalize(first) == normalize(second)  # the premise: libpg_query's own choice
    a = Analyzer()
    got = a.analyze(first), a.analyze(second)
    fresh = Analyzer().analyze(first), Analyzer().analyze(second)
    assert got == fresh
    assert got[0] != got[1]


def test_shape_twins_parameter_and_constant_are_analysed_apart() -> None:
    # normalize numbers constants after the parameters: `$1 = $2` is the shape of both.
    from pglast.parser import normalize

    params, constants = "DELETE FROM t WHERE $1 = $2", "DELETE FROM t WHERE 1 = 1"
    assert normalize(params) == normalize(constants)
    a = Analyzer()
    a.analyze(params)
    assert "unbounded_write" in a.analyze(constants).statements[0].flags


_SHAPES = [
    "SELECT * FROM {s}t WHERE id = {v}",
    "DELETE FROM {s}t WHERE id = {v}",
    "DELETE FROM {s}t WHERE {v} = {v}",
    "UPDATE {s}t SET a = {v} WHERE {v}",
    "SELECT pg_read_file({v}) FROM {s}t",
    "SELECT set_config({v}, {v}, false)",
    "SET {v2} = {v}",
    "COPY (SELECT {v}) TO {v}",
    "EXPLAIN (ANALYZE {v}) DELETE FROM {s}t",
    "BEGIN TRANSACTION READ ONLY; SELECT {v}",
    "SELECT * FROM {s}t WHERE a IN ({v}, {v}) LIMIT {v}",
    "CREATE FUNCTION {s}f() RETURNS int LANGUAGE sql AS {v}",
    # Constants `normalize` keeps, which the literal key would blank (see literals.py).
    "SELECT a, b FROM {s}t ORDER BY {v} LIMIT {v}",
    "SELECT a::varchar({v}) FROM {s}t GROUP BY {v}",
    "COPY {s}t FROM {v}",
    "CREATE TABLE {s}t (a int DEFAULT {v})",
    "PREPARE p AS DELETE FROM {s}t WHERE {v} = {v}",
    "SELECT {v} -- it's {v}\n, {v}\n{v}",
]
_VALUES = [
    "1", "0", "2", "2.5", "'x'", "'role'", "true", "false", "'SELECT pg_read_file(''y'')'",
    "'/etc/passwd'", "-3", "1234567890",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_SHAPES),
            st.sampled_from(["", "a.", "b."]),
            st.lists(st.sampled_from(_VALUES), min_size=3, max_size=3),
            st.sampled_from(["role", "transaction_read_only", "search_path"]),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_shape_cache_answers_as_a_fresh_analysis(
    cases: list[tuple[str, str, list[str], str]],
) -> None:
    # Differential: one warm analyzer, texts sharing shapes, against a cold one per text.
    warm = Analyzer()
    for shape, schema, values, name in cases:
        it = iter(values)
        text = shape.replace("{s}", schema).replace("{v2}", name)
        while "{v}" in text:
            text = text.replace("{v}", next(it, "1"), 1)
        assert warm.analyze(text) == Analyzer().analyze(text), text
