"""Column lineage: which table columns feed each output of a PostgreSQL statement.

Theory of operation
-------------------
PostgreSQL tells a client the origin (table OID, column number) of a result column only
when that column *is* a table column. Anything computed (`ssn || ''`, `upper(email)`,
`row_to_json(c)`, `string_agg(ssn, ',')`, a scalar subquery, a UNION) arrives with table
OID 0. This module reads the statement with PostgreSQL's own parser (pglast) and follows
names through scopes — FROM items, joins, subqueries, CTEs, views (through `Relations`,
which the catalog provides) — to say, for every output in order, which table columns its
value is computed from (`sources`), whether it is one of them unchanged (`direct`), and
whether something lineage cannot see into fed it (`opaque`: a user-defined function, an
unknown relation or column). `*` is expanded from the catalog, so outputs line up with the
columns of the RowDescription one to one.

Statements that move data without returning it (`CREATE TABLE AS`, `SELECT INTO`,
`INSERT … SELECT`, `UPDATE … SET`) are described by a `Write`: the target table and, per
target column, what flows into it. Cursors (`DECLARE`/`FETCH`), SQL-level `PREPARE`/
`EXECUTE` and `COPY … TO STDOUT` are named so a session can find the outputs later.
Lineage is over-approximate on purpose: when in doubt a column counts as a source.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pglast
from pglast import ast
from pglast.enums import SetOperation
from pglast.parser import ParseError

Ref = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Output:
    """One output column: its name and where its values come from."""

    name: str
    direct: Ref | None = None
    sources: frozenset[Ref] = frozenset()
    opaque: bool = False


@dataclass(frozen=True, slots=True)
class Relation:
    """A table, view or other relation the catalog knows: its columns' lineage in order."""

    schema: str
    name: str
    columns: tuple[Output, ...]


class Relations(Protocol):
    """What lineage needs from the catalog."""

    def relation(self, schema: str | None, name: str) -> Relation | None:
        """The relation `schema.name` (any visible schema when None), or None if unknown."""

    def user_function(self, schema: str | None, name: str) -> bool:
        """True when a function of that name is user-defined (its body is opaque)."""


class NoRelations:
    """A catalog that knows nothing: every table is unknown, every function built in."""

    def relation(self, schema: str | None, name: str) -> Relation | None:
        return None

    def user_function(self, schema: str | None, name: str) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Write:
    """Data a statement stores in a table: target and, per target column, what flows in."""

    schema: str | None
    table: str
    temporary: bool
    columns: tuple[tuple[str | None, Output], ...]


@dataclass(frozen=True, slots=True)
class StatementLineage:
    """Lineage of one statement; `outputs` None when it returns no rows or is unknown."""

    node: str
    outputs: tuple[Output, ...] | None = None
    writes: tuple[Write, ...] = ()
    # Every table column any output of the statement reads (for fail-closed fallbacks).
    touched: frozenset[Ref] = frozenset()
    opaque: bool = False
    declares: str | None = None  # DECLARE name CURSOR
    fetches: str | None = None  # FETCH/MOVE from name
    prepares: str | None = None  # PREPARE name AS
    executes: str | None = None  # EXECUTE name
    copy_out: str | None = None  # COPY … TO STDOUT: "text", "csv" or "binary"
    copy_options: tuple[tuple[str, str], ...] = ()  # delimiter, null, quote, escape, header
    ddl: bool = False


@dataclass(slots=True)
class _Scope:
    entries: list[tuple[str | None, list[Output]]] = field(default_factory=list)
    parent: _Scope | None = None
    ctes: dict[str, list[Output]] = field(default_factory=dict)

    def cte(self, name: str) -> list[Output] | None:
        s: _Scope | None = self
        while s is not None:
            if name in s.ctes:
                return s.ctes[name]
            s = s.parent
        return None


def _merge(name: str, outs: Sequence[Output]) -> Output:
    sources: set[Ref] = set()
    opaque = False
    for o in outs:
        sources |= o.sources
        opaque = opaque or o.opaque
    return Output(name, None, frozenset(sources), opaque)


_UNKNOWN = Output("?", None, frozenset(), True)
_DDL_PREFIXES = ("Create", "Alter", "Drop", "Rename")


class _Lineage:
    def __init__(self, relations: Relations) -> None:
        self.rel = relations

    # -- statements ------------------------------------------------------------------
    def statement(self, stmt: Any) -> StatementLineage:
        node = type(stmt).__name__
        if isinstance(stmt, ast.SelectStmt):
            outs = self.select(stmt, None)
            writes: tuple[Write, ...] = ()
            if stmt.intoClause is not None:
                writes = (self._into(stmt.intoClause, outs),)
                return self._done(node, None, writes, outs, ddl=True)
            return self._done(node, outs, (), outs)
        if isinstance(stmt, ast.CreateTableAsStmt):
            outs = self._query(stmt.query, None)
            into = stmt.into
            w = (self._into(into, outs),) if into is not None else ()
            return self._done(node, None, w, outs, ddl=True)
        if isinstance(stmt, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)):
            return self._dml(stmt)
        if isinstance(stmt, ast.DeclareCursorStmt):
            outs = self._query(stmt.query, None)
            return self._done(node, None, (), outs, declares=stmt.portalname)
        if isinstance(stmt, ast.FetchStmt):
            return StatementLineage(node, fetches=stmt.portalname)
        if isinstance(stmt, ast.PrepareStmt):
            outs = self._query(stmt.query, None)
            return self._done(node, None, (), outs, prepares=stmt.name)
        if isinstance(stmt, ast.ExecuteStmt):
            return StatementLineage(node, executes=stmt.name)
        if isinstance(stmt, ast.CopyStmt):
            return self._copy(stmt)
        if isinstance(stmt, ast.ExplainStmt):
            return StatementLineage(node, outputs=(Output("QUERY PLAN"),))
        return StatementLineage(node, ddl=node.startswith(_DDL_PREFIXES) or node == "ViewStmt")

    @staticmethod
    def _done(
        node: str,
        outputs: list[Output] | None,
        writes: tuple[Write, ...],
        read: list[Output],
        **kw: Any,
    ) -> StatementLineage:
        touched: set[Ref] = set()
        for o in read:
            touched |= o.sources
        return StatementLineage(
            node,
            tuple(outputs) if outputs is not None else None,
            writes,
            frozenset(touched),
            any(o.opaque for o in read),
            **kw,
        )

    def _query(self, q: Any, scope: _Scope | None) -> list[Output]:
        if isinstance(q, ast.SelectStmt):
            return self.select(q, scope)
        if q is None:
            return []
        lin = self.statement(q)
        return list(lin.outputs or ())

    def _into(self, into: Any, outs: list[Output]) -> Write:
        rel = into.rel
        names = [getattr(n, "sval", None) for n in (into.colNames or ())]
        cols = tuple((names[i] if i < len(names) else o.name, o) for i, o in enumerate(outs))
        return Write(rel.schemaname, rel.relname, rel.relpersistence == "t", cols)

    def _dml(self, stmt: Any) -> StatementLineage:
        node = type(stmt).__name__
        scope = _Scope()
        self._with(stmt.withClause, scope)
        target = stmt.relation
        table = self._range_var(target, scope)
        alias = target.alias.aliasname if target.alias is not None else target.relname
        scope.entries.append((alias, table))
        items = getattr(stmt, "fromClause", None) or getattr(stmt, "usingClause", None) or ()
        if isinstance(stmt, ast.MergeStmt) and stmt.sourceRelation is not None:
            items = (stmt.sourceRelation,)
        for item in items:
            self._from_item(item, scope)
        read: list[Output] = []
        writes: list[Write] = []
        if isinstance(stmt, ast.InsertStmt) and stmt.selectStmt is not None:
            outs = self._query(stmt.selectStmt, scope)
            names = [rt.name for rt in stmt.cols or ()]
            cols = tuple((names[i] if i < len(names) else None, o) for i, o in enumerate(outs))
            writes.append(Write(target.schemaname, target.relname, False, cols))
            read += outs
        elif isinstance(stmt, ast.UpdateStmt):
            cols_u: list[tuple[str | None, Output]] = []
            for rt in stmt.targetList or ():
                o = self.expr(rt.val, scope, rt.name or "?")
                cols_u.append((rt.name, o))
                read.append(o)
            writes.append(Write(target.schemaname, target.relname, False, tuple(cols_u)))
        elif isinstance(stmt, ast.MergeStmt):
            flow = self.expr(stmt.mergeWhenClauses, scope, "?")
            writes.append(Write(target.schemaname, target.relname, False, ((None, flow),)))
            read.append(flow)
        outputs: list[Output] | None = None
        returning = _returning(stmt)
        if returning:
            outputs = self.targets(returning, scope)
            read += outputs
        return self._done(node, outputs, tuple(writes), read)

    def _copy(self, stmt: Any) -> StatementLineage:
        node = type(stmt).__name__
        fmt = "text"
        options: list[tuple[str, str]] = []
        for opt in stmt.options or ():
            value = getattr(opt.arg, "sval", None) if opt.arg is not None else None
            if opt.defname == "format" and value is not None:
                fmt = str(value).lower()
            elif opt.defname in ("csv", "binary"):
                fmt = opt.defname
            elif opt.defname == "header":
                on = value is None or str(value).lower() not in ("false", "off", "0")
                if getattr(opt.arg, "boolval", True) is False or getattr(opt.arg, "ival", 1) == 0:
                    on = False
                options.append(("header", "true" if on else "false"))
            elif value is not None:
                options.append((opt.defname, str(value)))
        if stmt.is_from:
            return StatementLineage(node)
        if stmt.query is not None:
            outs = self._query(stmt.query, None)
        else:
            scope = _Scope()
            cols = self._range_var(stmt.relation, scope)
            wanted = [getattr(n, "sval", "") for n in stmt.attlist or ()]
            if wanted:
                by_name = {o.name: o for o in cols}
                outs = [by_name.get(w, _UNKNOWN) for w in wanted]
            else:
                outs = cols
        to_client = stmt.filename is None and not stmt.is_program
        return self._done(
            node, outs, (), outs, copy_out=fmt if to_client else None, copy_options=tuple(options)
        )

    # -- queries ---------------------------------------------------------------------
    def _with(self, with_clause: Any, scope: _Scope) -> None:
        if with_clause is None:
            return
        for cte in with_clause.ctes or ():
            names = [getattr(n, "sval", "") for n in cte.aliascolnames or ()]
            q = cte.ctequery
            if with_clause.recursive and isinstance(q, ast.SelectStmt) and q.larg is not None:
                first = self._query(q.larg, scope)
                scope.ctes[cte.ctename] = _rename(first, names)
            outs = self._query(q, scope)
            prev = scope.ctes.get(cte.ctename)
            if prev is not None and len(prev) == len(outs):
                outs = [_merge(o.name, (o, p)) for o, p in zip(outs, prev, strict=True)]
            scope.ctes[cte.ctename] = _rename(outs, names)

    def select(self, stmt: Any, parent: _Scope | None) -> list[Output]:
        scope = _Scope(parent=parent)
        self._with(stmt.withClause, scope)
        if stmt.op is not None and stmt.op != SetOperation.SETOP_NONE:
            left = self._query(stmt.larg, scope)
            right = self._query(stmt.rarg, scope)
            if len(left) != len(right):
                return [_merge(o.name, (o, *right)) for o in left]
            return [_merge(a.name, (a, b)) for a, b in zip(left, right, strict=True)]
        if stmt.valuesLists:
            rows = [
                [self.expr(v, scope, f"column{i + 1}") for i, v in enumerate(r)]
                for r in stmt.valuesLists
            ]
            return [_merge(f"column{i + 1}", col) for i, col in enumerate(zip(*rows, strict=False))]
        for item in stmt.fromClause or ():
            self._from_item(item, scope)
        return self.targets(stmt.targetList or (), scope)

    def targets(self, targets: Sequence[Any], scope: _Scope) -> list[Output]:
        outs: list[Output] = []
        for rt in targets:
            val: Any = rt.val
            fields: Any = getattr(val, "fields", None) or (None,)
            if isinstance(val, ast.ColumnRef) and isinstance(fields[-1], ast.A_Star):
                outs += self._star(val, scope)
                continue
            name = rt.name or _default_name(val)
            outs.append(self.expr(val, scope, name))
        return outs

    def _star(self, ref: Any, scope: _Scope) -> list[Output]:
        qual = [getattr(f, "sval", None) for f in ref.fields[:-1]]
        if not qual:
            return [o for _, cols in scope.entries for o in cols]
        found = _entry(scope, str(qual[-1]))
        return list(found) if found is not None else [_UNKNOWN]

    def _from_item(self, item: Any, scope: _Scope) -> None:
        if isinstance(item, ast.RangeVar):
            cols = self._range_var(item, scope)
            alias = item.alias.aliasname if item.alias is not None else item.relname
            scope.entries.append((alias, _rename(cols, _alias_cols(item.alias))))
        elif isinstance(item, ast.RangeSubselect):
            sub_parent = scope if item.lateral else scope.parent
            inner = _Scope(parent=sub_parent, ctes=scope.ctes)
            outs = self._query(item.subquery, inner)
            alias = item.alias.aliasname if item.alias is not None else "?subquery"
            scope.entries.append((alias, _rename(outs, _alias_cols(item.alias))))
        elif isinstance(item, ast.JoinExpr):
            self._from_item(item.larg, scope)
            self._from_item(item.rarg, scope)
            if item.alias is not None:
                joined = [o for _, cols in scope.entries[-2:] for o in cols]
                scope.entries.append(
                    (item.alias.aliasname, _rename(joined, _alias_cols(item.alias)))
                )
        elif isinstance(item, ast.RangeFunction):
            fouts: list[Output] = []
            for pair in item.functions or ():
                fn = pair[0] if isinstance(pair, (tuple, list)) else pair
                fouts.append(self.expr(fn, scope, "?function"))
            merged = _merge("?", fouts)
            names = _alias_cols(item.alias)
            alias = item.alias.aliasname if item.alias is not None else "?function"
            cols = [Output(n, None, merged.sources, merged.opaque) for n in names] or [
                Output(str(alias), None, merged.sources, merged.opaque)
            ]
            scope.entries.append((alias, cols))
        else:
            # RangeTableSample, RangeTableFunc (XMLTABLE/JSON_TABLE) and anything newer.
            src = _merge("?", list(self._walk(item, scope)))
            scope.entries.append(("?", [Output("?", None, src.sources, True)]))

    def _range_var(self, rv: Any, scope: _Scope) -> list[Output]:
        if rv.schemaname is None:
            cte = scope.cte(rv.relname)
            if cte is not None:
                return cte
        rel = self.rel.relation(rv.schemaname, rv.relname)
        if rel is None:
            return [Output("?", None, frozenset(), True)]
        return list(rel.columns)

    # -- expressions -------------------------------------------------------------------
    def expr(self, node: Any, scope: _Scope, name: str) -> Output:
        if isinstance(node, ast.ColumnRef):
            return self._column(node, scope, name)
        parts = list(self._walk(node, scope))
        return _merge(name, parts)

    def _walk(self, node: Any, scope: _Scope) -> Iterator[Output]:
        if node is None or isinstance(node, (str, int, float, bool)):
            return
        if isinstance(node, (tuple, list)):
            for n in node:
                yield from self._walk(n, scope)
            return
        if isinstance(node, ast.ColumnRef):
            yield self._column(node, scope, "?")
            return
        if isinstance(node, ast.SubLink):
            yield from self._query(node.subselect, scope)
            yield from self._walk(node.testexpr, scope)
            return
        if isinstance(node, (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt)):
            yield from self._query(node, scope)
            return
        if isinstance(node, ast.FuncCall):
            names = [getattr(n, "sval", "") for n in node.funcname or ()]
            schema = names[0] if len(names) > 1 else None
            if names and schema != "pg_catalog" and self.rel.user_function(schema, names[-1]):
                yield Output("?", None, frozenset(), True)
        if not isinstance(node, ast.Node):
            return
        for slot in getattr(type(node), "__slots__", ()):
            yield from self._walk(getattr(node, slot, None), scope)

    def _column(self, ref: Any, scope: _Scope, name: str) -> Output:
        fields = [getattr(f, "sval", None) for f in ref.fields]
        if any(f is None for f in fields):
            return _merge(name, self._star(ref, scope))
        col = fields[-1]
        qual = fields[:-1]
        s: _Scope | None = scope
        while s is not None:
            if qual:
                cols = _entry(s, str(qual[-1]))
                if cols is not None:
                    for o in cols:
                        if o.name == col:
                            return Output(name, o.direct, o.sources, o.opaque)
                    if any(o.opaque for o in cols):
                        return _merge(name, cols)
            else:
                for _, cols in s.entries:
                    for o in cols:
                        if o.name == col:
                            return Output(name, o.direct, o.sources, o.opaque)
                # A bare relation name is a whole-row reference: `row_to_json(c)`.
                whole = _entry(s, str(col))
                if whole is not None:
                    return _merge(name, whole)
                if any(o.opaque for _, cols in s.entries for o in cols):
                    return _merge(name, [o for _, cols in s.entries for o in cols])
            s = s.parent
        return Output(name, None, frozenset(), True)


def _entry(scope: _Scope, alias: str | None) -> list[Output] | None:
    for a, cols in reversed(scope.entries):
        if a == alias:
            return cols
    return None


def _alias_cols(alias: Any) -> list[str]:
    if alias is None:
        return []
    return [getattr(n, "sval", "") for n in alias.colnames or ()]


def _rename(outs: list[Output], names: Sequence[str]) -> list[Output]:
    if not names:
        return outs
    return [
        Output(names[i], o.direct, o.sources, o.opaque) if i < len(names) else o
        for i, o in enumerate(outs)
    ]


def _returning(stmt: Any) -> Sequence[Any]:
    clause = getattr(stmt, "returningClause", None)
    if clause is not None:
        return tuple(getattr(clause, "exprs", None) or ())
    return tuple(getattr(stmt, "returningList", None) or ())


def _default_name(val: Any) -> str:
    if isinstance(val, ast.ColumnRef) and val.fields:
        return str(getattr(val.fields[-1], "sval", "?column?"))
    if isinstance(val, ast.FuncCall) and val.funcname:
        return str(getattr(val.funcname[-1], "sval", "?column?"))
    if isinstance(val, ast.TypeCast):
        return _default_name(val.arg) if val.arg is not None else "?column?"
    return "?column?"


def analyze(sql: str, relations: Relations | None = None) -> tuple[StatementLineage, ...] | None:
    """Lineage of every statement in `sql`, in order; None when the text does not parse."""
    rel = relations if relations is not None else NoRelations()
    try:
        raws = pglast.parse_sql(sql)
    except ParseError:
        return None
    worker = _Lineage(rel)
    out: list[StatementLineage] = []
    for raw in raws:
        if raw.stmt is None:
            continue
        try:
            out.append(worker.statement(raw.stmt))
        except RecursionError:
            out.append(StatementLineage(type(raw.stmt).__name__, opaque=True))
    return tuple(out)


def view_columns(schema: str, name: str, definition: str, relations: Relations) -> Relation | None:
    """A view's columns traced to base tables, from its definition (`pg_get_viewdef`)."""
    lin = analyze(definition, relations)
    if not lin or lin[0].outputs is None:
        return None
    return Relation(schema, name, lin[0].outputs)
