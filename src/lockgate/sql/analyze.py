"""What a PostgreSQL statement does, read with PostgreSQL's own parser (pglast/libpg_query).

Theory of operation
-------------------
`Analyzer.analyze(sql)` returns an `Analysis`: one `StatementFacts` per statement in the
string, or the parser's error. Facts come from walking the parse tree (`_Walk`), never
from looking at the text: keywords in any case, comments inside them, quoted or
Unicode-escaped identifiers all reach us as the same tree the server will execute.

The walk tracks whether the node it is in *executes now*: the statement under
`EXPLAIN ANALYZE`, a data-modifying CTE, the query of `COPY (…) TO`, `CREATE TABLE AS`,
the statement a `PREPARE` names (judged when prepared; `EXECUTE` runs only what was
admitted) all do; the query of `CREATE VIEW`, a function body or a plain `EXPLAIN` do not.
Kinds and written relations count only where something executes; function calls and the
flags they raise count everywhere (conservative: a view or function body runs later).

Caching. Parsing costs tens of microseconds, so results are cached twice: by exact text,
and by the statement's *shape*: the text with its constants replaced by `$1`, `$2`, …
(libpg_query's `normalize`, the form `pg_stat_statements` shows; a few microseconds), so
`… WHERE aid = 1` and `… WHERE aid = 2` share one analysis. Everything but constants stays
in the shape as written (identifiers with their schemas, keywords, comments), so two texts
share one only when they differ in constants alone. A fact may be served by shape only if
it cannot depend on a constant's value. The walk sets `text_dependent` where it reads one:
- two constants compared or a constant in a boolean position in an UPDATE/DELETE's WHERE
  (`1=1`, `'a'='a'`, `true`), a SET/BEGIN/SET TRANSACTION/EXPLAIN option value, the
  arguments of `set_config(...)`;
- a DO block or function body, and its language (`normalize` replaces both);
Whether the walk reads such a part depends only on the tree's shape, never on the values,
so every text with one shape agrees; an analysis with any text-dependent statement is
cached by exact text only. A text holding a `$` is never served from, nor stored in, the
shape cache: `normalize` numbers constants after the parameters already there, so
`… WHERE $1 = $2` (parameters) and `… WHERE 1 = 1` (constants) would share a shape.
(Pairs that must be told apart: `tests/unit/sql/test_analyze.py::test_shape_twins_*`.)

`normalize` parses, which is most of what a new text costs. So a third cache is keyed by
the text's *literal key* (`literals.py`: plain integer and string constants blanked, one
pass over the bytes, no parse), and a text whose key is known skips `normalize`. A key is
trusted only once checked to be no coarser than the shape it stands for (`_keyed`).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import pglast
from pglast import ast
from pglast.enums import ObjectType, VariableSetKind
from pglast.parser import ParseError, normalize, parse_plpgsql_json

from lockgate.sql import catalog as fn
from lockgate.sql.catalog import (
    ALTER_SYSTEM,
    COPY_PROGRAM,
    CREATE_EXTENSION,
    CREATE_FUNCTION,
    DYNAMIC_SQL,
    READ_ONLY_ESCAPE,
    REMOTE_ACCESS,
    ROLE_SWITCH,
    SERVER_FILE,
    UNBOUNDED_WRITE,
)
from lockgate.sql.literals import INT, LITERAL_KEY_COMPILED, STRING, canonical
from lockgate.sql.predicates import (
    always_true,
    const_value,
    names,
    option_value,
    qualified,
    word_truth,
)

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
    "LoadStmt": "load",
}
# Statements that define or change schema objects besides the Create*/Alter*/Drop* ones.
_DDL_NODES = frozenset(
    {
        "IndexStmt", "ViewStmt", "RuleStmt", "DefineStmt", "CompositeTypeStmt", "CommentStmt",
        "SecLabelStmt", "ImportForeignSchemaStmt", "ReassignOwnedStmt", "RenameStmt",
        "ReindexStmt", "ClusterStmt", "RefreshMatViewStmt",
    }
)  # fmt: skip
# Every kind a rule may name: the node kinds plus the categories added by the walk.
KINDS = frozenset(_KIND_BY_NODE.values()) | {
    "reset", "revoke", "create", "alter", "drop", "ddl", "create_table_as", "copy_to",
    "copy_from", "index", "view", "rule", "comment", "refreshmatview", "cluster", "reindex",
}  # fmt: skip
# MergeWhenClause.commandType (CmdType): UPDATE, INSERT, DELETE.
_MERGE_ACTIONS = {2: "update", 3: "insert", 4: "delete"}
_READ_ONLY_SETTINGS = frozenset({"default_transaction_read_only", "transaction_read_only"})
_ROLE_SETTINGS = frozenset({"role", "session_authorization"})
_RELATION_DROPS = frozenset(
    {
        ObjectType.OBJECT_TABLE, ObjectType.OBJECT_VIEW, ObjectType.OBJECT_MATVIEW,
        ObjectType.OBJECT_INDEX, ObjectType.OBJECT_SEQUENCE, ObjectType.OBJECT_FOREIGN_TABLE,
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class StatementFacts:
    """Facts about one statement that policy and audit use.

    `kind` is the top-level statement; `kinds` everything it performs (nested ones
    included, e.g. {"select", "delete"} for a data-modifying CTE). Relations are named as
    written (schema-qualified where given); functions likewise.
    """

    kind: str
    node: str
    tables: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    kinds: frozenset[str] = frozenset()
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    flags: frozenset[str] = frozenset()
    settings: tuple[str, ...] = ()
    text_dependent: bool = False


@dataclass(frozen=True, slots=True)
class Analysis:
    """Facts of one command string. Cached and shared: the summaries are computed once."""

    statements: tuple[StatementFacts, ...]
    error: str | None = None
    # The statement kinds joined with ';' ("unparsed", "empty"), and the relations named.
    kind: str = field(init=False, compare=False)
    tables: tuple[str, ...] = field(init=False, compare=False)
    text_dependent: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        stmts = self.statements
        if self.error is not None:
            kind = "unparsed"
        else:
            kind = ";".join(s.kind for s in stmts) or "empty"
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "tables", tuple(dict.fromkeys(t for s in stmts for t in s.tables)))
        object.__setattr__(self, "text_dependent", any(s.text_dependent for s in stmts))


def _kind(node: ast.Node) -> str:
    name = type(node).__name__
    kind = _KIND_BY_NODE.get(name)
    if kind is not None:
        if kind == "select" and getattr(node, "intoClause", None) is not None:
            return "create_table_as"
        if kind == "set" and getattr(node, "kind", None) in (
            VariableSetKind.VAR_RESET,
            VariableSetKind.VAR_RESET_ALL,
        ):
            return "reset"
        if kind == "grant" and not getattr(node, "is_grant", True):
            return "revoke"
        return kind
    if name == "CreateTableAsStmt":
        return "create_table_as"
    for prefix, k in (
        ("Create", "create"),
        ("Alter", "alter"),
        ("Drop", "drop"),
        ("Rename", "alter"),
    ):
        if name.startswith(prefix):
            return k
    return name.removesuffix("Stmt").lower()


def _is_ddl(name: str) -> bool:
    if name in _DDL_NODES:
        return True
    return name.startswith(("Create", "Alter", "Drop")) and name != "AlterSystemStmt"


class _Walk:
    """One pass over a statement's tree, collecting its facts."""

    def __init__(self) -> None:
        self.kinds: dict[str, None] = {}
        self.reads: dict[str, None] = {}
        self.writes: dict[str, None] = {}
        self.functions: dict[str, None] = {}
        self.flags: set[str] = set()
        self.settings: dict[str, None] = {}
        self.ctes: set[str] = set()
        self.targets: set[int] = set()
        self.text_dependent = False
        self.depth = 0

    # -- generic traversal ----------------------------------------------------------------
    def visit(self, node: Any, ex: bool) -> None:
        if isinstance(node, tuple | list):
            for n in node:
                self.visit(n, ex)
            return
        if not isinstance(node, ast.Node):
            return
        name = type(node).__name__
        if name.endswith("Stmt"):
            self._statement(node, name, ex)
            if ex and _is_ddl(name) and name != "CreateTableAsStmt":
                # A definition runs nothing now: a view's query, a rule's actions.
                ex = False
        handler = getattr(self, "_" + name, None)
        if handler is None or handler(node, ex) is not True:
            self.children(node, ex)

    def children(self, node: ast.Node, ex: bool, skip: tuple[str, ...] = ()) -> None:
        for attr in node.__slots__:  # type: ignore[attr-defined]
            if attr in skip:
                continue
            value = getattr(node, attr, None)
            if isinstance(value, ast.Node | tuple | list):
                self.visit(value, ex)

    def _statement(self, node: ast.Node, name: str, ex: bool) -> None:
        with_clause = getattr(node, "withClause", None)
        if with_clause is not None:
            # CTE names shadow relations in the whole statement: know them before its FROM.
            self.ctes.update(c.ctename for c in with_clause.ctes or () if c.ctename)
        if not ex:
            return
        kind = _kind(node)
        self.kinds[kind] = None
        if _is_ddl(name) or kind == "create_table_as":
            self.kinds["ddl"] = None
            relation = getattr(node, "view" if name == "ViewStmt" else "relation", None)
            if isinstance(relation, ast.RangeVar):
                self.targets.add(id(relation))

    # -- relations ------------------------------------------------------------------------
    def _RangeVar(self, node: ast.RangeVar, ex: bool) -> bool:
        name = qualified((node.catalogname, node.schemaname, node.relname))
        if node.schemaname is None and name in self.ctes:
            return True
        if id(node) in self.targets:
            self.writes[name] = None
        else:
            self.reads[name] = None
        return True

    def _write_target(self, node: Any, ex: bool) -> None:
        relation = getattr(node, "relation", None)
        if ex and isinstance(relation, ast.RangeVar):
            self.targets.add(id(relation))

    def _MergeWhenClause(self, node: ast.MergeWhenClause, ex: bool) -> None:
        if ex:
            self.kinds[_MERGE_ACTIONS.get(int(node.commandType or 0), "merge")] = None

    _InsertStmt = _MergeStmt = _write_target

    def _UpdateStmt(self, node: ast.UpdateStmt | ast.DeleteStmt, ex: bool) -> None:
        self._write_target(node, ex)
        if ex and (node.whereClause is None or self._truth(node.whereClause) is True):
            self.flags.add(UNBOUNDED_WRITE)

    _DeleteStmt = _UpdateStmt

    def _TruncateStmt(self, node: ast.TruncateStmt, ex: bool) -> None:
        for rel in node.relations or ():
            if ex:
                self.targets.add(id(rel))

    def _IntoClause(self, node: ast.IntoClause, ex: bool) -> None:
        if ex:
            self.targets.add(id(node.rel))

    def _DropStmt(self, node: ast.DropStmt, ex: bool) -> bool:
        if node.removeType in _RELATION_DROPS:
            for obj in node.objects or ():
                self.writes[names(obj)] = None
        return True

    # -- statements that run another one ----------------------------------------------------
    def _ExplainStmt(self, node: ast.ExplainStmt, ex: bool) -> bool:
        analyze = False
        for opt in node.options or ():
            if opt.defname == "analyze":
                if opt.arg is not None:
                    self.text_dependent = True
                # `ANALYZE` with a value we cannot read counts as on: it would execute.
                analyze = opt.arg is None or word_truth(option_value(opt.arg)) is not False
        self.visit(node.query, ex and analyze)
        return True

    def _CopyStmt(self, node: ast.CopyStmt, ex: bool) -> None:
        if ex:
            self.kinds["copy_from" if node.is_from else "copy_to"] = None
            if node.is_from and node.relation is not None and ex:
                self.targets.add(id(node.relation))
        if node.filename is not None:
            self.flags.add(COPY_PROGRAM if node.is_program else SERVER_FILE)

    # -- settings, roles, transactions ------------------------------------------------------
    def _VariableSetStmt(self, node: ast.VariableSetStmt, ex: bool) -> bool:
        kind, name = node.kind, (node.name or "").lower()
        if kind == VariableSetKind.VAR_RESET_ALL:
            self.settings["all"] = None
            self.flags.add(READ_ONLY_ESCAPE)
            return True
        if kind == VariableSetKind.VAR_SET_MULTI:
            self._transaction_options(node.args)
            return True
        self.settings[name] = None
        if name in _ROLE_SETTINGS:
            self.flags.add(ROLE_SWITCH)
        if name in _READ_ONLY_SETTINGS:
            if kind != VariableSetKind.VAR_SET_VALUE:
                self.flags.add(READ_ONLY_ESCAPE)
            else:
                self.text_dependent = True
                values = [option_value(a) for a in node.args or ()]
                if len(values) != 1 or word_truth(values[0]) is not True:
                    self.flags.add(READ_ONLY_ESCAPE)
        elif node.args:
            self.text_dependent = True
        return True

    def _TransactionStmt(self, node: ast.TransactionStmt, ex: bool) -> bool:
        self._transaction_options(node.options)
        return True

    def _transaction_options(self, options: Any) -> None:
        for opt in options or ():
            if getattr(opt, "defname", "") == "transaction_read_only":
                self.text_dependent = True
                if word_truth(option_value(opt.arg)) is not True:
                    self.flags.add(READ_ONLY_ESCAPE)

    def _AlterSystemStmt(self, node: ast.AlterSystemStmt, ex: bool) -> bool:
        self.flags.add(ALTER_SYSTEM)
        setting = node.setstmt.name if node.setstmt is not None else None
        self.settings[(setting or "all").lower()] = None
        return True

    # -- functions and extensions ------------------------------------------------------------
    def _FuncCall(self, node: ast.FuncCall, ex: bool) -> None:
        name = names(node.funcname)
        self.functions[name] = None
        base = name.rpartition(".")[2].lower()
        self.flags.update(fn.function_flags(base))
        if base == "set_config":
            self.text_dependent = True
            ok, value = const_value(node.args[0]) if node.args else (False, None)
            setting = value.lower() if ok and isinstance(value, str) else ""
            if not setting or setting in _READ_ONLY_SETTINGS:
                self.flags.add(READ_ONLY_ESCAPE)
            if not setting or setting in _ROLE_SETTINGS:
                self.flags.add(ROLE_SWITCH)

    def _CreateFunctionStmt(self, node: ast.CreateFunctionStmt, ex: bool) -> bool:
        self.flags.add(CREATE_FUNCTION)
        self.functions[names(node.funcname)] = None
        options = {o.defname: o.arg for o in node.options or ()}
        language = getattr(options.get("language"), "sval", "sql").lower()
        body = options.get("as")
        if body is not None:
            self.text_dependent = True
            text = getattr(body[0], "sval", "") if isinstance(body, tuple) else ""
            self._body(text, language, node)
        self.children(node, False, skip=("options",))
        return True

    def _DoStmt(self, node: ast.DoStmt, ex: bool) -> bool:
        self.flags.add(DYNAMIC_SQL)
        self.text_dependent = True
        options = {o.defname: o.arg for o in node.args or ()}
        language = getattr(options.get("language"), "sval", "plpgsql").lower()
        text = getattr(options.get("as"), "sval", "")
        self._body(text, language, None, ex)
        return True

    def _CreateExtensionStmt(self, node: ast.CreateExtensionStmt, ex: bool) -> bool:
        self.flags.add(CREATE_EXTENSION)
        if node.extname in fn.REMOTE_EXTENSIONS:
            self.flags.add(REMOTE_ACCESS)
        return True

    def _remote(self, node: Any, ex: bool) -> None:
        self.flags.add(REMOTE_ACCESS)

    _CreateForeignServerStmt = _CreateUserMappingStmt = _CreateForeignTableStmt = _remote
    _ImportForeignSchemaStmt = _AlterForeignServerStmt = _AlterUserMappingStmt = _remote

    def _LoadStmt(self, node: Any, ex: bool) -> None:
        self.flags.add(SERVER_FILE)

    def _body(self, text: str, language: str, create: ast.Node | None, ex: bool = False) -> None:
        """Facts of a function or DO body; what cannot be read is dynamic SQL (opaque)."""
        if language == "sql":
            try:
                stmts = pglast.parse_sql(text)
            except ParseError:
                self.flags.add(DYNAMIC_SQL)
                return
            self._nested([r.stmt for r in stmts], ex)
        elif language == "plpgsql":
            body = _dollar(text)
            wrapped = (
                f"DO {body}"
                if create is None
                else f"CREATE FUNCTION f() RETURNS void AS {body} LANGUAGE plpgsql"
            )
            try:
                tree = json.loads(parse_plpgsql_json(wrapped))
            except (ParseError, ValueError):
                self.flags.add(DYNAMIC_SQL)
                return
            self._plpgsql(tree, ex)
        else:
            self.flags.add(DYNAMIC_SQL)

    def _plpgsql(self, tree: Any, ex: bool) -> None:
        stack = [tree]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
                continue
            if not isinstance(item, dict):
                continue
            for key, value in item.items():
                if key in fn.PLPGSQL_DYNAMIC:
                    self.flags.add(DYNAMIC_SQL)
                if key == "PLpgSQL_expr" and isinstance(value, dict):
                    self._plpgsql_expr(
                        str(value.get("query", "")), int(value.get("parseMode", 0)), ex
                    )
                stack.append(value)

    def _plpgsql_expr(self, query: str, mode: int, ex: bool) -> None:
        text = query if mode == 0 else f"SELECT {query}"
        try:
            stmts = pglast.parse_sql(text)
        except ParseError:
            # Assignments (`x := …`) and the like: only their right-hand side is SQL.
            _, sep, rhs = query.partition(":=")
            try:
                stmts = pglast.parse_sql(f"SELECT {rhs}") if sep else ()
            except ParseError:
                stmts = ()
            if not stmts:
                self.flags.add(DYNAMIC_SQL)
                return
        self._nested([r.stmt for r in stmts], ex)

    def _nested(self, stmts: list[Any], ex: bool) -> None:
        self.depth += 1
        try:
            if self.depth > 8:
                self.flags.add(DYNAMIC_SQL)
                return
            self.visit(stmts, ex)
        finally:
            self.depth -= 1

    # -- always-true predicates --------------------------------------------------------------
    def _truth(self, node: Any) -> bool | None:
        truth, read_constant = always_true(node)
        if read_constant:
            self.text_dependent = True
        return truth

    def facts(self, stmt: ast.Node) -> StatementFacts:
        tables = tuple(dict.fromkeys((*self.writes, *self.reads)))
        return StatementFacts(
            kind=_kind(stmt),
            node=type(stmt).__name__,
            tables=tables,
            functions=tuple(self.functions),
            kinds=frozenset(self.kinds),
            reads=tuple(self.reads),
            writes=tuple(self.writes),
            flags=frozenset(self.flags),
            settings=tuple(self.settings),
            text_dependent=self.text_dependent,
        )


def _dollar(text: str) -> str:
    tag = "$lockgate$"
    while tag in text:
        tag = tag[:-1] + "x$"
    return f"{tag}{text}{tag}"


def statement_facts(stmt: ast.Node) -> StatementFacts:
    """The facts of one parsed statement."""
    walk = _Walk()
    walk.visit(stmt, True)
    return walk.facts(stmt)


class _Cache:
    """Analyses by key, oldest stored first out: bounded in entries and in key characters.

    The keys are whole statement texts, so the character budget is what bounds memory
    against a client sending many distinct large statements.
    """

    __slots__ = ("_budget", "_chars", "_items", "_size", "get")

    def __init__(self, size: int, budget: int) -> None:
        self._items: OrderedDict[str | bytes, Analysis] = OrderedDict()
        self._size = size
        self._budget = budget
        self._chars = 0
        self.get = self._items.get

    def put(self, key: str | bytes, value: Analysis) -> None:
        if len(key) > self._budget >> 6:
            return  # a very large text: one parse per use costs less than what it pushes out
        items = self._items
        if key not in items:
            self._chars += len(key)
        items[key] = value
        while len(items) > self._size or self._chars > self._budget:
            self._chars -= len(items.popitem(last=False)[0])


# The literal key, compiled only (in Python it costs more than `normalize`).
_literal_key = LITERAL_KEY_COMPILED
# Stored for a key found coarser than its shape, so it is checked once, not at every use.
_UNTRUSTED = Analysis(())


def _keyed(key: bytes, shape: str) -> bool:
    """Whether every text with literal `key` normalizes to `shape`, that of the first one.

    Texts with one key differ only in the values of its blanks. `normalize` replaces most
    constants, whatever their value, but keeps some (`ORDER BY 1`, a typmod, a file name):
    if the key blanked one of those, the blanks set to one value and to another normalize
    differently (or differently from the first text), and the key is not trusted.
    """
    try:
        return all(
            normalize(canonical(key, number, string)) == shape
            for number, string in ((b"1", b"'a'"), (b"2", b"'b'"))
        )
    except ParseError:
        return False


class Analyzer:
    """Analyses SQL text with caching; safe to share within one event loop."""

    def __init__(self, cache_size: int = 20_000, cache_chars: int = 16 << 20) -> None:
        self._by_text = _Cache(cache_size, cache_chars)
        self._by_shape = _Cache(cache_size, cache_chars)
        self._by_key = _Cache(cache_size, cache_chars)

    def analyze(self, sql: str) -> Analysis:
        """Facts about every statement in `sql` (never raises on bad SQL: see `error`)."""
        hit = self._by_text.get(sql)
        if hit is not None:
            return hit
        if "$" in sql:
            result = self._parse(sql)
            self._by_text.put(sql, result)
            return result
        key = _literal_key(sql) if _literal_key is not None else None
        if key is not None and INT not in key and STRING not in key:
            key = None  # nothing blanked: the exact-text cache serves such a text
        known = None
        if key is not None:
            known = self._by_key.get(key)
            if known is not None and known is not _UNTRUSTED:
                return known
        try:
            shape = normalize(sql)
        except ParseError as exc:
            result = Analysis((), error=str(exc))
            self._by_text.put(sql, result)
            return result
        cached = self._by_shape.get(shape)
        if cached is None:
            result = self._parse(sql)
            if not result.text_dependent:
                self._by_shape.put(shape, result)
        else:
            result = cached
        if key is not None and known is None and not result.text_dependent:
            self._by_key.put(key, result if _keyed(key, shape) else _UNTRUSTED)
        self._by_text.put(sql, result)
        return result

    @staticmethod
    def _parse(sql: str) -> Analysis:
        try:
            raws = pglast.parse_sql(sql)
        except ParseError as exc:
            return Analysis((), error=str(exc))
        try:
            return Analysis(
                tuple(statement_facts(raw.stmt) for raw in raws if raw.stmt is not None)
            )
        except RecursionError:
            return Analysis((), error="statement too deeply nested to analyse")
