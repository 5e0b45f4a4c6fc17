"""Column lineage of statements: direct columns, derived outputs, writes, cursors, COPY."""

from __future__ import annotations

from lockgate.sql.lineage import Output, Relation, StatementLineage, analyze

T = ("public", "customers")


class Catalog:
    def relation(self, schema: str | None, name: str) -> Relation | None:
        if name == "customers" and schema in (None, "public"):
            cols = tuple(Output(c, (*T, c), frozenset({(*T, c)})) for c in ("id", "email", "ssn"))
            return Relation(*T, cols)
        if name == "v":
            ssn = (*T, "ssn")
            return Relation("public", "v", (Output("u", None, frozenset({ssn})),))
        return None

    def user_function(self, schema: str | None, name: str) -> bool:
        return name == "leak"


def one(sql: str) -> StatementLineage:
    got = analyze(sql, Catalog())
    assert got is not None and len(got) == 1
    return got[0]


def src(o: Output) -> set[str]:
    return {c for _, _, c in o.sources}


def test_direct_and_renamed() -> None:
    outs = one("SELECT ssn AS x, c.email FROM customers c").outputs
    assert outs is not None
    assert [o.direct for o in outs] == [(*T, "ssn"), (*T, "email")]
    assert outs[0].name == "x"


def test_derived_outputs() -> None:
    for sql, expect in [
        ("SELECT ssn || '' FROM customers", {"ssn"}),
        ("SELECT upper(email) FROM customers", {"email"}),
        ("SELECT row_to_json(c) FROM customers c", {"id", "email", "ssn"}),
        ("SELECT string_agg(ssn, ',') FROM customers", {"ssn"}),
        ("SELECT substr(ssn, 1, 3) FROM customers", {"ssn"}),
        ("SELECT (SELECT ssn FROM customers LIMIT 1)", {"ssn"}),
        ("WITH x AS (SELECT ssn AS s FROM customers) SELECT upper(s) FROM x", {"ssn"}),
        ("SELECT ssn FROM customers UNION SELECT email FROM customers", {"ssn", "email"}),
        ("SELECT u || '' FROM v", {"ssn"}),
        ("SELECT x FROM unnest(ARRAY(SELECT ssn FROM customers)) x", {"ssn"}),
    ]:
        outs = one(sql).outputs
        assert outs is not None and len(outs) == 1, sql
        assert outs[0].direct is None and src(outs[0]) == expect, sql


def test_star_expands_in_order() -> None:
    outs = one("SELECT *, 1 FROM customers a JOIN customers b ON a.id = b.id").outputs
    assert outs is not None and [o.name for o in outs] == ["id", "email", "ssn"] * 2 + ["?column?"]


def test_opaque_things() -> None:
    for sql in ("SELECT leak()", "SELECT a FROM nowhere", "SELECT * FROM nowhere"):
        outs = one(sql).outputs
        assert outs is not None and all(o.opaque for o in outs), sql
    outs = one("SELECT now(), 1").outputs
    assert outs is not None and not any(o.opaque or o.sources for o in outs)


def test_writes_cursors_prepare_copy() -> None:
    ctas = one("CREATE TEMP TABLE t AS SELECT ssn, upper(email) AS e FROM customers")
    assert ctas.outputs is None and ctas.ddl
    (w,) = ctas.writes
    assert w.temporary and w.table == "t" and [n for n, _ in w.columns] == ["ssn", "e"]
    ins = one("INSERT INTO other SELECT ssn FROM customers")
    assert not ins.writes[0].temporary and src(ins.writes[0].columns[0][1]) == {"ssn"}
    upd = one("UPDATE customers SET email = ssn RETURNING id")
    assert src(upd.writes[0].columns[0][1]) == {"ssn"} and upd.outputs is not None
    assert one("DECLARE c CURSOR FOR SELECT ssn FROM customers").declares == "c"
    assert one("FETCH 5 FROM c").fetches == "c"
    assert one("PREPARE p AS SELECT 1").prepares == "p"
    cp = one("COPY customers (ssn) TO STDOUT WITH (FORMAT csv, HEADER)")
    assert cp.copy_out == "csv" and ("header", "true") in cp.copy_options
    assert cp.outputs is not None and cp.outputs[0].direct == (*T, "ssn")
    assert one("COPY customers TO '/tmp/x'").copy_out is None


def test_unparsable_and_multi() -> None:
    assert analyze("SELEC nonsense") is None
    got = analyze("SELECT 1; SELECT ssn FROM customers", Catalog())
    assert got is not None and len(got) == 2
