"""Constant folding for guardrails: literal values, and WHERE clauses that are always true.

`always_true(where)` says whether an UPDATE/DELETE's predicate holds on every row
(`1=1`, `'a'='a'`, `true`, `NOT false`, `1=1 OR x`, `x = x`, a bare parameter), and whether
the answer read a constant's value: then it cannot be cached by the statement's shape.
That depends only on the tree's shape (two constants compared, a constant where a boolean
goes), never on the values themselves.
"""

from __future__ import annotations

from typing import Any

from pglast import ast

_TRUE_WORDS = frozenset({"t", "true", "on", "yes", "y", "1"})
_FALSE_WORDS = frozenset({"f", "false", "off", "no", "n", "0"})
_COMPARE = frozenset({"=", "<>", "!=", "<", ">", "<=", ">="})
_REFLEXIVE = frozenset({"=", "<=", ">="})


def qualified(parts: tuple[str | None, ...]) -> str:
    return ".".join(p for p in parts if p)


def names(nodes: Any) -> str:
    """A dotted name from a list of String nodes."""
    return qualified(tuple(str(getattr(n, "sval", "") or "") for n in nodes or ()))


def const_value(node: Any) -> tuple[bool, Any]:
    """(True, value) for a literal (optionally cast); value None for NULL."""
    if isinstance(node, ast.TypeCast):
        ok, value = const_value(node.arg)
        if (
            ok
            and isinstance(value, str)
            and names(node.typeName.names if node.typeName else ()).endswith("bool")
        ):
            word = value.strip().lower()
            if word in _TRUE_WORDS or word in _FALSE_WORDS:
                return True, word in _TRUE_WORDS
        return ok, value
    if isinstance(node, ast.A_Const):
        if node.isnull:
            return True, None
        val = node.val
        for attr in ("boolval", "ival", "fval", "sval", "bsval"):
            if hasattr(val, attr):
                v = getattr(val, attr)
                return True, float(v) if attr == "fval" else v
    return False, None


def option_value(node: Any) -> Any:
    ok, value = const_value(node)
    if ok:
        return value
    for attr in ("sval", "boolval", "ival"):
        if hasattr(node, attr):
            return getattr(node, attr)
    return None


def word_truth(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    return None


def _compare(op: str, a: Any, b: Any) -> bool | None:
    if a is None or b is None or isinstance(a, str) != isinstance(b, str):
        return None
    try:
        result = {
            "=": a == b, "<>": a != b, "!=": a != b, "<": a < b, ">": a > b,
            "<=": a <= b, ">=": a >= b,
        }[op]  # fmt: skip
    except TypeError:
        return None
    return bool(result)


def always_true(node: Any) -> tuple[bool | None, bool]:
    """(True: always true, False: never, None: depends on the row; whether a constant was read)."""
    seen: list[bool] = []
    return _truth(node, seen), bool(seen)


def _truth(node: Any, seen: list[bool]) -> bool | None:
    """True if `node` is always true, False if always false, None if it depends on rows."""
    if isinstance(node, ast.BoolExpr):
        parts = [_truth(a, seen) for a in node.args or ()]
        if node.boolop == 2:  # NOT
            return None if parts[0] is None else not parts[0]
        if node.boolop == 0:  # AND
            return False if False in parts else (True if all(p is True for p in parts) else None)
        return True if True in parts else (False if all(p is False for p in parts) else None)
    if isinstance(node, ast.ParamRef):
        return True  # a bare parameter may well be `true`: treat as unbounded
    if isinstance(node, ast.A_Const | ast.TypeCast):
        ok, value = const_value(node)
        if ok:
            seen.append(True)
            return word_truth(value)
        return None
    if isinstance(node, ast.NullTest):
        ok, value = const_value(node.arg)
        if ok:
            seen.append(True)
            return (value is None) == (node.nulltesttype == 0)
        return None
    if isinstance(node, ast.A_Expr) and node.kind == 0 and node.name:
        op = names(node.name)
        if op not in _COMPARE or node.lexpr is None:
            return None
        lok, left = const_value(node.lexpr)
        rok, right = const_value(node.rexpr)
        if lok and rok:
            seen.append(True)
            return _compare(op, left, right)
        if not lok and not rok and node.lexpr == node.rexpr and op in _REFLEXIVE:
            return True  # `x = x`: true on every row where x is not NULL
    return None
