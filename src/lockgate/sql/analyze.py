"""What a PostgreSQL statement does, read with PostgreSQL's own parser (pglast/libpg_query).

Theory of operation
-------------------
`Analyzer.analyze(sql)` returns an `Analysis`: one `StatementFacts` per statement in the
string, or the parser's error. Parsing a statement into Python objects costs tens of
microseconds, so results are cached twice: by exact text, and by the statement's
*fingerprint* (libpg_query's hash of the parse tree with constants removed, ~3 µs), so
`... WHERE aid = 1` and `... WHERE aid = 2` share one analysis. Only facts that cannot
depend on constant values are stored under a fingerprint (`shape_only`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import pglast
from pglast import ast, visitors
from pglast.parser import ParseError, fingerprint

_KIND_BY_NODE = {
    "SelectStmt": "select",
    "InsertStmt": "insert",
    "UpdateStmt": "update",
    "DeleteStmt": "delete",
    "MergeStmt": "merge",
    "CopyStmt": "copy",
    "TransactionStmt": "transaction",
    "VariableSetStmt": "set",
    "VariableShowStmt": "show",
    "ExplainStmt": "explain",
    "TruncateStmt": "truncate",
    "GrantStmt": "grant",
    "GrantRoleStmt": "grant",
    "DoStmt": "do",
    "CallStmt": "call",
    "PrepareStmt": "prepare",
    "ExecuteStmt": "execute",
    "DeallocateStmt": "deallocate",
    "ListenStmt": "listen",
    "UnlistenStmt": "unlisten",
    "NotifyStmt": "notify",
    "DeclareCursorStmt": "declare",
    "FetchStmt": "fetch",
    "ClosePortalStmt": "close",
    "LockStmt": "lock",
    "VacuumStmt": "vacuum",
    "DiscardStmt": "discard",
    "CheckPointStmt": "checkpoint",
    "AlterSystemStmt": "alter_system",
}


@dataclass(frozen=True, slots=True)
class StatementFacts:
    """Facts about one statement that policy and audit use."""

    kind: str
    node: str
    tables: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Analysis:
    statements: tuple[StatementFacts, ...]
    error: str | None = None

    @property
    def kind(self) -> str:
        """The statement kinds, joined with ';' for multi-statement strings."""
        if self.error is not None:
            return "unparsed"
        return ";".join(s.kind for s in self.statements) or "empty"

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t for s in self.statements for t in s.tables))


def _kind(node: ast.Node) -> str:
    name = type(node).__name__
    kind = _KIND_BY_NODE.get(name)
    if kind is not None:
        if kind == "select" and getattr(node, "intoClause", None) is not None:
            return "create_table_as"
        return kind
    for prefix, k in (("Create", "create"), ("Alter", "alter"), ("Drop", "drop"), ("Rename", "alter")):
        if name.startswith(prefix):
            return k
    return name.removesuffix("Stmt").lower()


def _qualified(parts: tuple[str | None, ...]) -> str:
    return ".".join(p for p in parts if p)


class _Collector(visitors.Visitor):
    def __init__(self) -> None:
        self.tables: dict[str, None] = {}
        self.functions: dict[str, None] = {}
        self.cte_names: set[str] = set()

    def visit_CommonTableExpr(self, _ancestors: object, node: ast.CommonTableExpr) -> None:
        if node.ctename:
            self.cte_names.add(node.ctename)

    def visit_RangeVar(self, _ancestors: object, node: ast.RangeVar) -> None:
        name = _qualified((node.catalogname, node.schemaname, node.relname))
        self.tables[name] = None

    def visit_FuncCall(self, _ancestors: object, node: ast.FuncCall) -> None:
        parts = tuple(getattr(n, "sval", "") for n in node.funcname or ())
        self.functions[_qualified(parts)] = None


def _facts(stmt: ast.Node) -> StatementFacts:
    c = _Collector()
    c(stmt)
    tables = tuple(t for t in c.tables if t not in c.cte_names)
    return StatementFacts(_kind(stmt), type(stmt).__name__, tables, tuple(c.functions))


class Analyzer:
    """Analyses SQL text with caching; safe to share within one event loop."""

    def __init__(self, cache_size: int = 20_000) -> None:
        self._by_text: OrderedDict[str, Analysis] = OrderedDict()
        self._by_shape: OrderedDict[str, Analysis] = OrderedDict()
        self._size = cache_size

    def analyze(self, sql: str) -> Analysis:
        """Facts about every statement in `sql` (never raises on bad SQL: see `error`)."""
        hit = self._by_text.get(sql)
        if hit is not None:
            return hit
        try:
            shape = fingerprint(sql)
        except ParseError as exc:
            result = Analysis((), error=str(exc))
            self._remember(self._by_text, sql, result)
            return result
        cached = self._by_shape.get(shape)
        if cached is None:
            result = self._parse(sql)
            self._remember(self._by_shape, shape, result)
        else:
            result = cached
        self._remember(self._by_text, sql, result)
        return result

    @staticmethod
    def _parse(sql: str) -> Analysis:
        try:
            raws = pglast.parse_sql(sql)
        except ParseError as exc:
            return Analysis((), error=str(exc))
        return Analysis(tuple(_facts(raw.stmt) for raw in raws if raw.stmt is not None))

    def _remember(self, cache: OrderedDict[str, Analysis], key: str, value: Analysis) -> None:
        cache[key] = value
        if len(cache) > self._size:
            cache.popitem(last=False)
